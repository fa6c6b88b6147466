"""The registry's contract over every registered name of every kind (depth, width, heal, sparsity,
quant, mix, runner): each carries a summary, is listed by `edgeprune methods`, is found by its name,
and a near-miss of it answers with a suggestion. Kind-specific contracts (what a spec does) live
beside each kind: test_runner_specs, test_width_specs, test_quant_types, test_heal, test_depth_methods."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgeprune import registry
from edgeprune.cli import main
from edgeprune.errors import ConfigError

ALL = [(kind, name) for kind in registry.kinds() for name in registry.names(kind)]


def test_every_kind_is_registered():
    assert {"depth", "width", "heal", "sparsity", "quant", "mix", "runner"} <= set(registry.kinds())


@pytest.mark.parametrize("kind,name", ALL)
def test_a_registered_name_carries_its_summary_and_is_found(kind, name):
    spec = registry.get(kind, name)
    assert isinstance(getattr(spec, "summary", None), str) and spec.summary.strip(), (kind, name)
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    if typo not in registry.names(kind):
        with pytest.raises(ConfigError, match="did you mean|choose one of"):
            registry.get(kind, typo)


def test_methods_lists_every_registered_name():
    res = CliRunner().invoke(main, ["methods"])
    assert res.exit_code == 0, res.output
    listed = {tuple(line.split()[:2]) for line in res.output.splitlines() if line.strip()}
    assert set(ALL) <= listed, set(ALL) - listed
