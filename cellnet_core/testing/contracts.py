"""Contract test classes, one per component kind. A plugin subclasses them for its parts::

    from cellnet_core.testing.contracts import EncoderContract

    class TestMyEncoder(EncoderContract):
        name = "myenc"
        config = {"dim": 32}          # fields besides 'name'

Each class finds the component through *real* entry-point discovery (the ``registry``
fixture) and checks what every component of that kind promises. Override ``make_context`` (or
the class attributes below) when a part needs more around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from cellnet_core.pipeline import BuildContext


class ComponentContract:
    """Base of the contract test classes: subclass one per component, set ``name`` (and ``config``
    for non-default options), and pytest runs every ``test_*`` method against the component as it
    is found through real plugin discovery."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    config: ClassVar[dict[str, Any]] = {}
    #: embedding size used by the fake teacher of the context
    embedding_dim: ClassVar[int] = 48
    #: (shape, channels) of the flat reshaper the context gives cores and kernels
    lattice_shape: ClassVar[tuple[int, int, int]] = (4, 4, 3)
    lattice_channels: ClassVar[int] = 4

    # -- helpers -----------------------------------------------------------------------
    def full_config(self) -> dict[str, Any]:
        """The component's config as a dict: ``{'name': name, **config}``."""
        return {"name": self.name, **self.config}

    def make_context(self, registry) -> BuildContext:
        """A context with a fake teacher (the core's ``hashing`` encoder, named as such) and a
        ``flat`` reshaper over ``lattice_shape`` × ``lattice_channels``."""
        import torch

        from cellnet_core.builtin.components import FlatReshaper, HashingEncoder
        from cellnet_core.cache import CachedEncoder

        fake_teacher = HashingEncoder(dim=self.embedding_dim)
        x, y, z = self.lattice_shape
        reshaper = FlatReshaper(x * y * z * self.lattice_channels, self.lattice_shape, self.lattice_channels)
        return BuildContext(registry=registry, device=torch.device("cpu"), seed=0,
                            encoder=CachedEncoder(fake_teacher, enabled=False),
                            embedding_dim=self.embedding_dim, reshaper=reshaper)

    def build(self, registry) -> Any:
        """Build the component from :meth:`full_config` with the test context (seeded)."""
        import torch

        torch.manual_seed(0)
        cfg = registry.config_for(self.kind, self.full_config())
        return registry.build(self.kind, cfg, self.make_context(registry))

    # -- tests every kind shares -------------------------------------------------------------
    def test_registered_through_discovery(self, registry):
        """The name is registered through the entry points and has a one-line summary."""
        assert self.name in registry.names(self.kind), (
            f"{self.kind} '{self.name}' not found via entry points; registered: {registry.names(self.kind)}")
        assert registry.get(self.kind, self.name).summary, "give the component a one-line summary"

    def test_config_round_trip(self, registry):
        """The validated config dumps to JSON and validates back to an equal config."""
        cfg = registry.config_for(self.kind, self.full_config())
        again = registry.config_for(self.kind, cfg.model_dump(mode="json"))
        assert again == cfg

    def test_config_rejects_unknown_field(self, registry):
        """A misspelt field is a ConfigError naming the field."""
        from cellnet_core.errors import ConfigError

        with pytest.raises(ConfigError, match="no_such_field: unknown field"):
            registry.config_for(self.kind, {**self.full_config(), "no_such_field": 1})

    def test_config_fields_documented(self, registry):
        """Every config field (except ``name``) has a description."""
        cls = registry.get(self.kind, self.name).config_cls
        undocumented = [n for n, f in cls.model_fields.items() if n != "name" and not f.description]
        assert not undocumented, f"fields without description: {undocumented}"


class EncoderContract(ComponentContract):
    """Contract of an ``encoder``: shape, dtype, determinism, empty input, a stable fingerprint."""

    kind = "encoder"
    sample_texts: ClassVar[list[str]] = ["How old are you?", "What is your name?", "", "I like tea."]

    def test_encode_shape_dtype(self, registry):
        """``encode`` returns a finite float32 tensor ``[len(texts), dim]``."""
        import torch

        enc = self.build(registry)
        out = enc.encode(self.sample_texts)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert out.shape == (len(self.sample_texts), enc.dim)
        assert torch.isfinite(out).all()

    def test_empty_input(self, registry):
        """No texts give a ``[0, dim]`` tensor."""
        enc = self.build(registry)
        assert tuple(enc.encode([]).shape) == (0, enc.dim)

    def test_deterministic(self, registry):
        """Two builds encode the same texts to the same vectors."""
        import torch

        a = self.build(registry).encode(self.sample_texts)
        b = self.build(registry).encode(self.sample_texts)
        torch.testing.assert_close(a, b)

    def test_fingerprint(self, registry):
        """The fingerprint is a non-empty string, equal for two builds of the same config."""
        enc = self.build(registry)
        assert isinstance(enc.fingerprint, str) and enc.fingerprint
        assert enc.fingerprint == self.build(registry).fingerprint


class ReshaperContract(ComponentContract):
    """Contract of a ``reshaper``: field and output shapes, gradients reaching its parameters."""

    kind = "reshaper"

    def test_shapes(self, registry):
        """``to_field`` gives ``[B, *shape, channels]`` and ``from_state`` gives ``[B, out_dim]``."""
        import torch

        r = self.build(registry)
        emb = torch.randn(3, self.embedding_dim)
        field = r.to_field(emb)
        assert field.shape == (3, *tuple(r.shape), r.channels)
        out = r.from_state(field)
        assert out.shape == (3, r.out_dim)

    def test_gradients_reach_parameters(self, registry):
        """A loss on the round trip gives a non-zero gradient to some learned parameter."""
        import torch

        r = self.build(registry)
        params = [p for p in getattr(r, "parameters", lambda: [])() if p.requires_grad]
        if not params:
            pytest.skip("no learned parameters")
        emb = torch.randn(2, self.embedding_dim)
        r.from_state(r.to_field(emb) * 1.5).pow(2).sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


class CoreContract(ComponentContract):
    """Contract of a ``core``: keeps the field's shape, is deterministic, passes gradients."""

    kind = "core"

    def test_forward_keeps_shape(self, registry):
        """``forward(field)`` returns a finite float32 state of the field's shape."""
        import torch

        core = self.build(registry)
        x, y, z = self.lattice_shape
        field = torch.randn(2, x, y, z, self.lattice_channels)
        out = core(field)
        assert out.shape == field.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_same_seed_same_output(self, registry):
        """Two builds with the same seed give the same output in eval mode."""
        import torch

        x, y, z = self.lattice_shape
        field = torch.randn(2, x, y, z, self.lattice_channels)
        a, b = self.build(registry), self.build(registry)
        a.eval(), b.eval()
        with torch.no_grad():
            torch.testing.assert_close(a(field), b(field))

    def test_gradients_reach_parameters(self, registry):
        """Gradients reach the input field and every learned parameter."""
        import torch

        core = self.build(registry)
        params = [p for p in core.parameters() if p.requires_grad]
        if not params:
            pytest.skip("no learned parameters")
        x, y, z = self.lattice_shape
        field = torch.randn(2, x, y, z, self.lattice_channels, requires_grad=True)
        core(field).pow(2).sum().backward()
        assert field.grad is not None and torch.isfinite(field.grad).all()


class KernelContract(ComponentContract):
    """Subclasses provide ``make_step_inputs(registry) -> (state, field, cell, topology)``."""

    kind = "kernel"

    def make_step_inputs(self, registry):  # pragma: no cover - must be overridden
        """``(state, field, cell, topology)`` for one step; kernel plugins override it."""
        raise NotImplementedError

    def test_step_shape(self, registry):
        """``step`` keeps the state's shape and returns finite values."""
        import torch

        kernel = self.build(registry)
        state, field, cell, topo = self.make_step_inputs(registry)
        out = kernel.step(state, field, cell, topo)
        assert out.shape == state.shape and torch.isfinite(out).all()


class DecoderContract(ComponentContract):
    """Contract of a ``decoder``: strings out, sorted candidates, save/load round trip."""

    kind = "decoder"
    fit_texts: ClassVar[list[str]] = [
        "hello there", "how are you today", "i am fine thank you", "what is your name",
        "my name is cell", "the weather is nice", "i like green tea", "goodbye and see you soon",
    ]

    def fitted(self, registry):
        """The decoder built and, when it can be fitted, fitted on :attr:`fit_texts`; returns
        ``(decoder, embeddings)``."""
        dec = self.build(registry)
        ctx = self.make_context(registry)
        embs = ctx.encoder.encode(self.fit_texts)
        if hasattr(dec, "fit"):
            dec.fit(self.fit_texts, embs)
        return dec, embs

    def test_decode_returns_strings(self, registry):
        """``decode`` returns one string per embedding."""
        dec, embs = self.fitted(registry)
        out = dec.decode(embs[:3])
        assert isinstance(out, list) and len(out) == 3 and all(isinstance(t, str) for t in out)

    def test_candidates_sorted(self, registry):
        """``candidates`` (where offered) returns one list per embedding, best score first."""
        dec, embs = self.fitted(registry)
        if not hasattr(dec, "candidates"):
            pytest.skip("decoder reports no candidates")
        rows = dec.candidates(embs[:2], 3)
        assert len(rows) == 2
        for row in rows:
            scores = [c.score for c in row]
            assert scores == sorted(scores, reverse=True)

    def test_save_load_round_trip(self, registry, tmp_path: Path):
        """``save`` writes the files it lists and a fresh decoder loaded from them decodes the same."""
        dec, embs = self.fitted(registry)
        if not hasattr(dec, "save"):
            pytest.skip("decoder has no artefacts")
        files = dec.save(tmp_path / "decoder")
        assert all(Path(f).exists() for f in files)
        again = self.build(registry)
        again.load(tmp_path / "decoder")
        assert again.decode(embs[:4]) == dec.decode(embs[:4])


class StrategyContract(ComponentContract):
    """Runs ``fit`` on a tiny pipeline. Override ``pipeline_config`` and ``dataset`` as needed."""

    kind = "strategy"
    pipeline_config: ClassVar[dict[str, Any]] = {
        "data": {"name": "chatterbot"},
        "encoder": {"name": "hashing", "dim": 48},
        "reshaper": {"name": "flat", "shape": [4, 4, 3], "channels": 1},
    }

    def dataset(self, registry, tmp_path: Path):
        """The data ``fit`` is given (the core's small fake question/answer pairs by default)."""
        from cellnet_core.testing.fakes import FakePairs

        return FakePairs()

    def make_pipeline(self, registry, tmp_path: Path):
        """A pipeline built from :attr:`pipeline_config` with this strategy as its ``training``
        section."""
        from cellnet_core.config import run_config_model, validate_component
        from cellnet_core.pipeline import Pipeline

        data = dict(self.pipeline_config)
        data["training"] = self.full_config()
        sections = {}
        for section, kind in (("encoder", "encoder"), ("reshaper", "reshaper"), ("core", "core"),
                              ("decoder", "decoder"), ("training", "strategy")):
            if section in data:
                sections[section] = validate_component(registry, kind, data[section], where=section)
        model = run_config_model(registry)
        # the run config needs a valid 'data' section although fit() gets self.dataset(): use the
        # configured one, else the first registered dataset that validates from its name alone
        from cellnet_core.errors import ConfigError

        names = [data.get("data", {}).get("name")] + registry.names("dataset")
        for n in names:
            cfg = data.get("data") if n == names[0] else {"name": n}
            try:
                sections["data"] = validate_component(registry, "dataset", cfg, where="data")
                break
            except ConfigError:
                continue
        else:
            pytest.skip("no dataset plugin registered for the strategy contract")
        cfg = model.model_validate({**data, **sections}, context={"registry": registry})
        return Pipeline.build(cfg, registry, cache_dir=tmp_path / "cache")

    def test_fit_returns_result(self, registry, tmp_path):
        """``fit(pipeline, data, run)`` returns a :class:`~cellnet_core.interfaces.TrainResult`."""
        from cellnet_core.interfaces import TrainResult
        from cellnet_core.run import RunContext

        pipe = self.make_pipeline(registry, tmp_path)
        strategy = registry.build("strategy", pipe.config.training)
        result = strategy.fit(pipe, self.dataset(registry, tmp_path), RunContext(tmp_path / "run"))
        assert isinstance(result, TrainResult)


class DatasetContract(ComponentContract):
    """Contract of a ``dataset``: seeded, disjoint splits and non-empty texts."""

    kind = "dataset"

    def test_splits_deterministic_and_disjoint(self, registry):
        """Two builds give the same splits; no group is in train and in val or test."""
        a, b = self.build(registry), self.build(registry)
        splits = {}
        for s in ("train", "val", "test"):
            pa, pb = a.pairs(s), b.pairs(s)
            assert [(p.question, p.answer) for p in pa] == [(p.question, p.answer) for p in pb]
            splits[s] = {p.group for p in pa}
        assert a.pairs("train"), "empty training split"
        assert not (splits["train"] & splits["test"]), "a group is in both train and test"
        assert not (splits["train"] & splits["val"]), "a group is in both train and val"

    def test_texts_are_strings(self, registry):
        """``texts('train')`` holds non-empty strings."""
        texts = self.build(registry).texts("train")
        assert texts and all(isinstance(t, str) and t.strip() for t in texts[:100])


class CellContract(ComponentContract):
    """Contract of a ``cell`` (a lattice's update rule, ``core.cell``): the call
    ``delta = cell(neigh [..., K, C], own [..., C], inp [..., C] | None)`` on any leading dims,
    ``inp=None`` equal to zeros, a zero update at initialisation, gradients to every parameter,
    same seed → same cell, and, when the cell declares ``rowwise = True``, numbers that do not
    depend on which other cells are evaluated beside it. The lattice runs it with the ``reference``
    kernel and every fast kernel registered for the CPU, with equal results and gradients.

    The cell's factory gets ``ctx.channels`` (C) and ``ctx.k`` (K neighbours per cell), as the
    lattice gives them."""

    kind = "cell"
    #: neighbours per cell in the tests (6: the von Neumann neighbourhood)
    k: ClassVar[int] = 6
    #: the update is exactly zero at initialisation (an untrained lattice is the identity)
    starts_at_zero: ClassVar[bool] = True
    #: fast kernels compared with ``reference`` in a lattice (those that are registered)
    kernels: ClassVar[tuple[str, ...]] = ("fused", "chunked")

    def make_context(self, registry):
        """What a cell factory gets: ``channels``, ``k``, ``registry``, ``device``, ``seed``."""
        import types

        import torch

        return types.SimpleNamespace(channels=self.lattice_channels, k=self.k, registry=registry,
                                     device=torch.device("cpu"), seed=0)

    def inputs(self, lead: tuple[int, ...] = (2, 3, 2, 2), seed: int = 0):
        """``(neigh [*lead, K, C], own [*lead, C], inp [*lead, C])``, seeded."""
        import torch

        g = torch.Generator().manual_seed(seed)
        c = self.lattice_channels
        return (torch.randn(*lead, self.k, c, generator=g), torch.randn(*lead, c, generator=g),
                torch.randn(*lead, c, generator=g))

    def randomised(self, registry):
        """The cell with every parameter drawn at random (seeded), so that no layer is zero."""
        import torch

        cell = self.build(registry)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in cell.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        return cell

    def test_is_module(self, registry):
        """The factory returns a ``torch.nn.Module`` (the lattice trains its parameters)."""
        from torch import nn

        assert isinstance(self.build(registry), nn.Module)

    def test_delta_shape_dtype_any_leading_dims(self, registry):
        """``delta`` has ``own``'s shape and dtype and is finite, on lattice dims ``[B, X, Y, Z]``
        and on flat rows ``[M]`` alike, with the same numbers."""
        import torch

        cell = self.randomised(registry)
        neigh, own, inp = self.inputs()
        out = cell(neigh, own, inp)
        assert out.shape == own.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
        flat = cell(neigh.reshape(-1, self.k, self.lattice_channels), own.reshape(-1, self.lattice_channels),
                    inp.reshape(-1, self.lattice_channels))
        torch.testing.assert_close(flat.reshape(out.shape), out)

    def test_no_input_equals_zero_input(self, registry):
        """``inp=None`` (no input at this step) gives what zeros give."""
        import torch

        cell = self.randomised(registry)
        neigh, own, inp = self.inputs()
        torch.testing.assert_close(cell(neigh, own, None), cell(neigh, own, torch.zeros_like(inp)))

    def test_starts_at_zero(self, registry):
        """At initialisation the update is zero, so an untrained lattice returns its input."""
        import torch

        if not self.starts_at_zero:
            pytest.skip("this cell does not start at a zero update")
        neigh, own, inp = self.inputs()
        out = self.build(registry)(neigh, own, inp)
        torch.testing.assert_close(out, torch.zeros_like(out))

    def test_rowwise_declared_truthfully(self, registry):
        """A cell that declares ``rowwise = True`` gives every row the same update whether it is
        evaluated with all rows, a subset or in another order (the fast kernels rely on it)."""
        import torch

        cell = self.randomised(registry)
        if getattr(cell, "rowwise", False) is not True:
            pytest.skip("the cell does not declare rowwise: the fast kernels run the reference step for it")
        cell.eval()
        neigh, own, inp = self.inputs((24,))
        full = cell(neigh, own, inp)
        perm = torch.randperm(24, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(cell(neigh[perm], own[perm], inp[perm]), full[perm])
        torch.testing.assert_close(cell(neigh[5:9], own[5:9], inp[5:9]), full[5:9])

    def test_gradients_reach_every_parameter(self, registry):
        """Every parameter gets a finite, non-zero gradient (with random weights)."""
        import torch

        cell = self.randomised(registry)
        neigh, own, inp = self.inputs()
        cell(neigh, own, inp).pow(2).sum().backward()
        for name, p in cell.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient reaches {name}"
            assert p.grad.abs().sum() > 0, f"the gradient of {name} is zero"

    def test_same_seed_same_cell(self, registry):
        """Two builds with the same seed are the same cell."""
        import torch

        a, b = self.build(registry), self.build(registry)
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            torch.testing.assert_close(pa, pb, msg=f"parameter {name} differs between two seeded builds")

    def lattice(self, registry, kernel: str):
        """A ``lattice`` core of this cell on the contract's lattice, stepped by ``kernel``."""
        if "lattice" not in registry.names("core"):
            pytest.skip("no 'lattice' core registered")
        cfg = registry.config_for("core", {"name": "lattice", "cell": self.full_config(), "steps": 3,
                                           "injection": "every", "kernel": kernel}, where="core")
        # the pipeline's context (a flat reshaper of lattice_shape × lattice_channels), not a cell's
        return registry.build("core", cfg, ComponentContract.make_context(self, registry))

    def test_fast_kernels_match_reference(self, registry):
        """In a lattice, every registered fast kernel gives the ``reference`` kernel's state and
        gradients for this cell (it supports the cell or runs the reference step for it)."""
        import torch

        ref = self.lattice(registry, "reference")
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in ref.cell.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        x, y, z = self.lattice_shape
        field = torch.randn(2, x, y, z, self.lattice_channels, generator=g)
        kernels = [k for k in self.kernels if k in registry.names("kernel")]
        if not kernels:
            pytest.skip("no fast kernel registered")

        def run(core):
            f = field.clone().requires_grad_(True)
            out = core(f)
            out.pow(2).sum().backward()
            return out.detach(), f.grad, [p.grad for p in core.cell.parameters()]

        ref.eval()
        want = run(ref)
        for name in kernels:
            core = self.lattice(registry, name)
            core.load_state_dict(ref.state_dict())
            core.eval()
            got = run(core)
            torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5, msg=f"kernel {name}: state")
            torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5, msg=f"kernel {name}: field grad")
            for a, b in zip(got[2], want[2]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"kernel {name}: parameter grad")


class LossContract(ComponentContract):
    """Contract of a ``loss`` (``training.loss``): ``loss(batch) -> scalar`` on the batch view
    every loss sees (``batch.pred [b, D]``, ``batch.cols [K, D]`` candidate answers, ``batch.pos
    [b]`` the column of each true answer): finite, differentiable in ``pred``, lower for the true
    answer than for a wrong one, deterministic; a loss that does not declare ``uses_negatives =
    True`` ignores the other columns.

    The loss's factory gets ``ctx.temperature`` and ``ctx.margin`` (the strategy's defaults)."""

    kind = "loss"
    dim: ClassVar[int] = 16

    def make_context(self, registry):
        """What a loss factory gets: the strategy's ``temperature`` and ``margin``, ``registry``."""
        import types

        return types.SimpleNamespace(temperature=0.05, margin=0.2, registry=registry)

    def batch(self, pred=None, seed: int = 0, rows: int = 6, cols: int = 8):
        """A batch view: ``rows`` predictions near their true answers among ``cols`` candidates."""
        import types

        import torch

        g = torch.Generator().manual_seed(seed)
        bank = torch.nn.functional.normalize(torch.randn(cols, self.dim, generator=g), dim=-1)
        pos = torch.randint(0, cols, (rows,), generator=g)
        if pred is None:
            pred = bank[pos] + 0.3 * torch.randn(rows, self.dim, generator=g)
        return types.SimpleNamespace(pred=pred, cols=bank, pos=pos)

    def test_scalar_finite_differentiable(self, registry):
        """A finite scalar whose gradient reaches the predictions."""
        import torch

        loss = self.build(registry)
        b = self.batch()
        b.pred = b.pred.clone().requires_grad_(True)
        value = loss(b)
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value)
        value.backward()
        assert b.pred.grad is not None and torch.isfinite(b.pred.grad).all() and b.pred.grad.abs().sum() > 0

    def test_true_answer_costs_less(self, registry):
        """Predicting each row's true answer costs less than predicting another column."""
        loss = self.build(registry)
        b = self.batch()
        right = self.batch(pred=b.cols[b.pos].clone())
        wrong = self.batch(pred=b.cols[(b.pos + 1) % b.cols.shape[0]].clone())
        assert float(loss(right)) < float(loss(wrong))

    def test_deterministic_and_one_row(self, registry):
        """Two builds give the same value; a batch of one row works."""
        import torch

        a, b = self.build(registry), self.build(registry)
        torch.testing.assert_close(a(self.batch()), b(self.batch()))
        one = self.batch(rows=1, cols=1)
        assert torch.isfinite(a(one))

    def test_negatives_declared(self, registry):
        """``uses_negatives`` (default False) is a bool; without it the loss reads only the true
        answers' columns, so mined negatives would be wasted on it."""
        import torch

        loss = self.build(registry)
        uses = getattr(loss, "uses_negatives", False)
        assert isinstance(uses, bool)
        if uses:
            return
        b = self.batch()
        other = self.batch()
        keep = torch.zeros(other.cols.shape[0], dtype=torch.bool)
        keep[other.pos] = True
        other.cols = torch.where(keep[:, None], other.cols, torch.randn_like(other.cols))
        torch.testing.assert_close(loss(b), loss(other))
