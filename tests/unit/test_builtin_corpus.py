"""The built-in corpus is saved in the user cache once built: the saved copy gives the same
text, and a corrupt copy is rebuilt instead of trusted."""

from __future__ import annotations

from wanda_export.data import builtin


def test_the_saved_corpus_is_the_built_one_and_a_broken_copy_is_rebuilt(isolated_cache):
    builtin._corpus.cache_clear()
    saved = builtin._saved_corpus_path()
    assert saved.is_relative_to(isolated_cache) and not saved.exists()
    built = builtin._corpus()
    assert saved.exists()
    builtin._corpus.cache_clear()
    assert builtin._corpus() == built  # read back from the saved copy
    saved.write_text("[[1, 2", encoding="utf-8")  # cut short
    builtin._corpus.cache_clear()
    assert builtin._corpus() == built and saved.read_text(encoding="utf-8").startswith('[["')
    builtin._corpus.cache_clear()
