"""Reading YAML safely and within bounds: plain values only (no tags, no Python objects), and a
document refused as soon as it nests deeper than MAX_YAML_DEPTH, holds more than
MAX_YAML_ALIASES aliases or expands (aliases followed, "billion laughs") to more than
MAX_YAML_NODES values, in time linear in the file."""

from __future__ import annotations

from typing import Any

import yaml

from wanda_export.config.base import describe_value

# Real pipeline files are a few kilobytes with fewer than 1,000 values, a handful of aliases and
# about 5 levels of nesting.
MAX_YAML_NODES = 20_000  # values (scalars, lists, mappings) once every alias is expanded
MAX_YAML_ALIASES = 1_000  # uses of an anchor (`*name`)
MAX_YAML_DEPTH = 64  # nesting levels, aliases followed
MAX_INTEGER_DIGITS = 100  # no setting takes a longer integer
_YAML_TAGS = "tag:yaml.org,2002:"


class BoundedLoader(yaml.SafeLoader):
    """The safe loader (plain values only), refusing while it composes a document that nests
    deeper than MAX_YAML_DEPTH, holds more than MAX_YAML_NODES values or MAX_YAML_ALIASES
    aliases, and, while it constructs, a tag, an over-long integer or an unreadable value."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = self.nodes = self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise LimitError(alias_message(), event.start_mark)
            return super().compose_node(parent, index)
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise LimitError(size_message(), event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise LimitError(depth_message(), event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date 2024-13-45
            shown = describe_value(node.value) if isinstance(node, yaml.ScalarNode) else "value"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown}: {exc}", node.start_mark) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INTEGER_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value):,} characters, longer than any "
                f"setting takes (at most {MAX_INTEGER_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_undefined(self, node: yaml.Node) -> Any:
        tag = node.tag.replace(_YAML_TAGS, "!!", 1)
        raise yaml.constructor.ConstructorError(
            None, None, f"the tag {tag} is not allowed: a pipeline file holds plain values "
            "(mappings, lists, strings, numbers, true/false, null), never Python objects",
            node.start_mark)


BoundedLoader.add_constructor(f"{_YAML_TAGS}int", BoundedLoader.construct_yaml_int)
BoundedLoader.add_constructor(None, BoundedLoader.construct_undefined)


class LimitError(Exception):
    """A document over one of the YAML limits, at the mark where the limit was passed."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


def alias_message() -> str:
    return (f"more than {MAX_YAML_ALIASES:,} aliases (*name); a pipeline file needs a "
            "handful at most")


def size_message() -> str:
    return (f"the document holds more than {MAX_YAML_NODES:,} values once its aliases (*name) "
            "are expanded; a pipeline file has fewer than 1,000")


def depth_message() -> str:
    return f"the document nests deeper than {MAX_YAML_DEPTH} levels (aliases followed)"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def expansion(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of a composed document once every alias is expanded, each capped just
    past its limit. Each node object is visited once (memoised), so the time is linear in the
    file however many times its aliases multiply; an alias inside its own anchor raises
    `_LimitError`."""
    cap_size, cap_depth = MAX_YAML_NODES + 1, MAX_YAML_DEPTH + 1
    done: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()  # started, not finished: the current path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = [done[id(child)] for child in _children(node)]
            done[key] = (min(cap_size, 1 + sum(size for size, _ in kids)),
                         min(cap_depth, 1 + max((depth for _, depth in kids), default=0)))
            open_nodes.discard(key)
            continue
        if key in done:
            continue
        if key in open_nodes:
            raise LimitError("an alias refers to its own anchor (a recursive alias), which "
                              "would expand forever", node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in done)
    return done[id(root)]


def compose_bounded(loader: BoundedLoader) -> yaml.Node | None:
    """The loader's single document as nodes, refused (LimitError) when its aliases expand past
    MAX_YAML_NODES values or MAX_YAML_DEPTH levels; None for an empty document."""
    node = loader.get_single_node()
    if node is not None:
        size, depth = expansion(node)
        if size > MAX_YAML_NODES:
            raise LimitError(size_message(), None)
        if depth > MAX_YAML_DEPTH:
            raise LimitError(depth_message(), None)
    return node


def read_value(text: str) -> Any:
    """One value written as YAML on a command line (`0.6`, `dense`, `[onnx, safetensors]`,
    `{max: 30}`), read within the same bounds as a file. A plain `2:4` stays the string it
    means (YAML 1.1 would read it as the base-60 integer 124). Raises LimitError or
    yaml.YAMLError."""
    loader = BoundedLoader(text)
    try:
        node = compose_bounded(loader)
        if node is None:
            return None
        _sexagesimal_as_strings(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _sexagesimal_as_strings(root: yaml.Node) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            if node.style is None and ":" in node.value and node.tag in (
                    f"{_YAML_TAGS}int", f"{_YAML_TAGS}float"):
                node.tag = f"{_YAML_TAGS}str"
        else:
            stack.extend(_children(node))
