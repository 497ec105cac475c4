"""YAML for the user's files (profiles, --args-file): safe_load without aliases.

Neither format needs anchors, and aliases are how a 1 KB file expands into gigabytes (the "billion laughs"): each
alias is a reference, so loading is cheap, but anything that walks or prints the result is not.
"""

from __future__ import annotations

import yaml


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here; write the values out",
                                              event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> object:
    """yaml.safe_load, refusing aliases (a yaml.YAMLError like any other syntax error)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
