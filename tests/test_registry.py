import pytest

from cellnet_core.builtin.configs import HashingEncoderConfig
from cellnet_core.errors import DuplicateComponentError, MissingDependencyError, UnknownComponentError
from cellnet_core.registry import Registry


def make():
    r = Registry()
    r.current_plugin = "first"
    r.add("encoder", "minilm", HashingEncoderConfig, lambda c, x: "built", summary="s")
    r.add("encoder", "hashing", HashingEncoderConfig, lambda c, x: "built", summary="s")
    return r


def test_unknown_name_lists_available_and_suggests():
    with pytest.raises(UnknownComponentError) as exc:
        make().get("encoder", "minlm", where="encoder")
    assert str(exc.value) == "encoder: unknown 'minlm'; available: hashing, minilm; did you mean 'minilm'?"


def test_unknown_kind():
    with pytest.raises(UnknownComponentError, match="kind: unknown 'encoders'.*did you mean 'encoder'"):
        make().get("encoders", "x")


def test_duplicate_names_both_plugins():
    r = make()
    r.current_plugin = "second"
    with pytest.raises(DuplicateComponentError,
                       match="encoder 'minilm' is registered twice: by plugin 'first' and by plugin 'second'"):
        r.add("encoder", "minilm", HashingEncoderConfig, lambda c, x: None)


def test_missing_dependency_gives_install_hint():
    from typing import Literal

    from cellnet_core.config import ComponentConfig

    class NeedsConfig(ComponentConfig):
        name: Literal["needs"] = "needs"

    r = Registry()
    r.add("encoder", "needs", NeedsConfig, "no_such_module_xyz:build", summary="s",
          requires=("no_such_module_xyz",), install_hint="pip install cellnet-x[extra]")
    with pytest.raises(MissingDependencyError,
                       match=r"needs no_such_module_xyz, which is not installed; install it with: pip install cellnet-x\[extra\]"):
        r.build("encoder", {"name": "needs"})
    assert r.describe("encoder")[0]["available"] is False


def test_many_names_show_closest_and_point_to_components():
    r = Registry()
    for i in range(30):
        r.add("decoder", f"dec{i:02d}", HashingEncoderConfig, lambda c, x: None)
    with pytest.raises(UnknownComponentError, match=r"cellnet components --kind decoder"):
        r.get("decoder", "dec3x")


def test_lazy_factory_is_imported_only_on_build():
    r = Registry()
    r.add("encoder", "hashing", HashingEncoderConfig, "cellnet_core.builtin.components:build_hashing")
    assert r.names("encoder") == ["hashing"]
    enc = r.build("encoder", {"name": "hashing", "dim": 16})
    assert enc.encode(["a b"]).shape == (1, 16)
