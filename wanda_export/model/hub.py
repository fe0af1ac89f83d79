"""Reaching the Hugging Face hub: offline mode, one fast reachability probe, error mapping.

transformers retries an unreachable hub for tens of seconds before giving up. Instead one HEAD
request for the repo's config.json, without retries and with a short timeout, decides up
front: a missing repo or revision is the user's input (ConfigError), no answer means the files
can only come from the local cache, and a model missing there too is the environment's problem
(EnvironmentProblem), reported at once in one line.
"""

from __future__ import annotations

import os
import time

from wanda_export.errors import ConfigError, EnvironmentProblem
from wanda_export.model.checkpoint import first_line

PROBE_TIMEOUT_S = 5.0  # used unless HF_HUB_ETAG_TIMEOUT is set; transformers' default is 10 s
PROBE_MEMO_S = 60.0  # one run asks up to three times (rule check, config, weights): ask once
_TRUE = {"1", "ON", "YES", "TRUE"}
LOCAL_HINT = "or pass a local checkpoint directory / .gguf file"
_HTTP_CLIENTS = ("httpx", "httpcore", "requests", "urllib3")
_answers: dict[tuple[str, str, str | None], tuple[float, str | None]] = {}


def offline() -> bool:
    """Whether the user asked for offline mode, read at call time rather than import time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def probe_timeout() -> float:
    """Seconds to wait for the hub: HF_HUB_ETAG_TIMEOUT when set, else PROBE_TIMEOUT_S."""
    from huggingface_hub import constants

    if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT:
        return float(constants.HF_HUB_ETAG_TIMEOUT)
    return PROBE_TIMEOUT_S


def unreachable_reason(repo_id: str, revision: str | None) -> str | None:
    """Ask the hub once for the repo's config.json: None when it answers, else why not.

    Offline mode answers "HF_HUB_OFFLINE is set" without a request; an answer is reused for
    PROBE_MEMO_S. A repo, revision or config.json the hub says does not exist raises
    ConfigError.
    """
    if offline():
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    key = (constants.ENDPOINT, repo_id, revision)
    asked, answer = _answers.get(key, (float("-inf"), None))
    if time.monotonic() - asked > PROBE_MEMO_S:
        answer = _probe(repo_id, revision)
        _answers[key] = (time.monotonic(), answer)
    return answer


def _probe(repo_id: str, revision: str | None) -> str | None:
    """One HEAD request for the repo's config.json, without retries: None when it answers."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision),
                             timeout=probe_timeout())
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError,
            RemoteEntryNotFoundError) as error:
        raise not_found(repo_id, revision, error) from error
    except Exception as error:  # noqa: BLE001 - DNS, refused, TLS, timeout, 5xx: no answer
        return f"{constants.ENDPOINT} did not answer: {type(error).__name__}: {first_line(error)}"
    return None


def not_found(repo_id: str, revision: str | None, error: Exception) -> ConfigError:
    """The ConfigError for a repo, revision or file that the hub says does not exist."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return ConfigError(f"hub model {repo_id!r} is gated: accept its terms on the hub first",
                           hint="then log in with `hf auth login` or set HF_TOKEN")
    if isinstance(error, RevisionNotFoundError):
        return ConfigError(f"hub model {repo_id!r} has no revision {revision!r}",
                           hint="fix model: {revision: ...} in the pipeline file")
    if isinstance(error, RepositoryNotFoundError):
        return ConfigError(f"hub model {repo_id!r} does not exist (or is private)",
                           hint="check the id in model: {path: ...}; for a private repo set "
                                "HF_TOKEN")
    return ConfigError(f"hub model {repo_id!r} has no {_file_of(error)}; it is not a "
                       "transformers checkpoint of a supported format")


def _file_of(error: Exception) -> str:
    """The file name a RemoteEntryNotFoundError is about, from its request URL."""
    response = getattr(error, "response", None)
    url = str(getattr(getattr(response, "request", None), "url", "") or "")
    return url.rsplit("/", 1)[-1] or "such file"


def load_error(repo_id: str, revision: str | None, reason: str | None,
               error: Exception) -> Exception:
    """Map a failed hub load to ConfigError (nothing of that name) or EnvironmentProblem.

    ``reason`` is why the hub was not asked (offline, unreachable): the files then had to be in
    the local cache, and their absence is the environment's problem.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if reason is not None:
        hint = ("unset HF_HUB_OFFLINE to download it, " if offline()
                else "check the network, proxy or HF_ENDPOINT, ") + LOCAL_HINT
        return EnvironmentProblem(f"hub model {repo_id!r} is not in the local Hugging Face "
                                  f"cache and the hub cannot be used: {reason}", hint=hint)
    chain = _chain(error)
    for cause in chain:
        if isinstance(cause, (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError,
                              RemoteEntryNotFoundError)):
            return not_found(repo_id, revision, cause)
    if any(environmental(cause) for cause in chain):
        return EnvironmentProblem(f"could not download {repo_id!r} from the Hugging Face hub: "
                                  f"{first_line(error)}",
                                  hint=f"check the network and disk space, {LOCAL_HINT}")
    return ConfigError(f"could not load hub model {repo_id!r}: {first_line(error)}")


def _chain(error: BaseException) -> list[BaseException]:
    """An error and its causes / contexts, outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def environmental(error: BaseException) -> bool:
    """Whether an error is the machine's or the network's: an OS error with an errno (disk
    full, permission), a connection or timeout error, or an HTTP client's error."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(error, (ConnectionError, TimeoutError, LocalEntryNotFoundError)):
        return True
    if isinstance(error, OSError) and error.errno is not None:
        return True
    return type(error).__module__.split(".")[0].startswith(_HTTP_CLIENTS)
