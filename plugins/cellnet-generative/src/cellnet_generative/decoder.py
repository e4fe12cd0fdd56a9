"""The trainable generative decoders ``ret`` and ``cct-mamba``: tokenizer + conditional LM +
training loop + generation + save/load."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from cellnet_core.checkpoint import (atomic_write_json, atomic_write_text, load_tensors, read_json, save_tensors,
                                     sha256_file)
from cellnet_core.errors import CheckpointError, ConfigError, DataError
from cellnet_core.interfaces import Candidate
from cellnet_generative import __version__
from cellnet_generative.config import ARCHITECTURE_FIELDS, GenerativeDecoderConfig
from cellnet_generative.generation import GenerationOptions, beam_search, generate
from cellnet_generative.models import CctMambaLM, RetLM
from cellnet_generative.quality import filter_options, is_degenerate
from cellnet_generative.tokenizer import BOS, EOS, PAD, decode_ids, train_tokenizer

META_FILE = "decoder.json"
WEIGHTS_FILE = "weights.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "cellnet-generative-decoder"


def read_decoder_meta(meta_path: Path, fmt: str, kind: str, cfg: Any, fields: Sequence[str]) -> dict[str, Any]:
    """The JSON a decoder's ``save`` wrote, checked: present, parseable, of format ``fmt`` and kind
    ``kind``, and trained with the same ``fields`` as ``cfg``; else :class:`CheckpointError` naming it."""
    meta = read_json(meta_path, f"not a '{kind}' decoder directory")
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("kind") != kind:
        held = meta.get("kind") if isinstance(meta, dict) else None
        raise CheckpointError(f"{meta_path}: holds a '{held}' decoder, the config asks for '{kind}'")
    saved = meta.get("config", {})
    for f in fields:
        if saved.get(f) != getattr(cfg, f):
            raise CheckpointError(f"{meta_path}: decoder was trained with {f}={saved.get(f)!r}, the config "
                                  f"says {getattr(cfg, f)!r}")
    return meta


def saved_embedding_dim(meta_path: Path, meta: dict[str, Any], expected: int | None) -> int:
    """The embedding width a saved decoder was trained for; :class:`CheckpointError` when the run
    gives another one (``expected`` None: anything goes)."""
    emb_dim = int(meta["embedding_dim"])
    if expected is not None and emb_dim != expected:
        raise CheckpointError(f"{meta_path}: decoder expects {emb_dim}-dim embeddings, the run gives {expected}")
    return emb_dim


def load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str) -> torch.nn.Module:
    """``module`` with ``tensors`` loaded strictly, in eval mode; a mismatch is a :class:`CheckpointError`."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not match the {what} ({str(exc).splitlines()[0]})") from None
    return module.eval()


def split_by_text(texts: Sequence[str], val_fraction: float, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices, split by distinct text so that a sentence is never on both
    sides; no held-out rows with fewer than 20 distinct texts."""
    uniq = sorted(set(texts))
    n_val = int(round(len(uniq) * val_fraction)) if len(uniq) >= 20 else 0
    val_set = {uniq[i] for i in torch.randperm(len(uniq), generator=gen)[:n_val].tolist()}
    return ([i for i, t in enumerate(texts) if t not in val_set], [i for i, t in enumerate(texts) if t in val_set])


def length_batches(n: int, batch_size: int, gen: torch.Generator, lengths: Sequence[int]) -> list[list[int]]:
    """Shuffled batches of similar length (sorted inside windows of 50 batches) to waste little
    compute on padding; the same ``gen`` state gives the same batches."""
    perm = torch.randperm(n, generator=gen).tolist()
    window = batch_size * 50
    batches = []
    for w in range(0, n, window):
        chunk = sorted(perm[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


class GenerativeDecoder:
    """Embedding → newly written text. ``fit(texts, embs)`` trains a tokenizer and the model;
    ``decode`` generates with the configured strategy; ``candidates`` returns beam hypotheses."""

    def __init__(self, cfg: GenerativeDecoderConfig, embedding_dim: int | None = None, seed: int = 0,
                 device: Any = None):
        self.cfg = cfg
        self.kind = cfg.name
        self.embedding_dim = embedding_dim
        self.seed = cfg.seed if cfg.seed is not None else seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.tokenizer = None
        self.model: torch.nn.Module | None = None
        self.history: list[dict[str, float]] = []

    # -- construction ---------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """Whether a model and tokenizer exist (fitted or loaded)."""
        return self.model is not None and self.tokenizer is not None

    def _make_model(self, vocab: int, emb_dim: int) -> torch.nn.Module:
        c = self.cfg
        common = dict(vocab=vocab, emb_dim=emb_dim, d_model=c.d_model, n_layers=c.n_layers,
                      prefix_len=c.prefix_len, dropout=c.dropout, normalize_input=c.normalize_input)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.kind == "ret":
                m = RetLM(n_heads=c.n_heads, ffn_hidden=c.ffn_hidden, max_len=c.max_len, rope_base=c.rope_base,
                          **common)
            else:
                m = CctMambaLM(d_state=c.d_state, expand=c.expand, d_conv=c.d_conv, front_kernel=c.front_kernel,
                               **common)
        return m.to(self.device)

    def num_parameters(self) -> int:
        """Parameters of the model (0 before it exists)."""
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0

    def _require(self) -> None:
        if not self.trained:
            raise CheckpointError(f"decoder '{self.kind}' is not trained: fit it first (a 'decoder' training "
                                  f"strategy) or load a trained run")

    # -- data -----------------------------------------------------------------------------
    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        bos, eos = self.tokenizer.token_to_id(BOS), self.tokenizer.token_to_id(EOS)
        encs = self.tokenizer.encode_batch(list(texts))
        return [[bos] + e.ids[: self.cfg.max_len - 2] + [eos] for e in encs]

    @staticmethod
    def _pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(s) for s in seqs) - 1
        inp = torch.zeros(len(seqs), n, dtype=torch.long)
        tgt = torch.full((len(seqs), n), -100, dtype=torch.long)
        for i, s in enumerate(seqs):
            inp[i, : len(s) - 1] = torch.tensor(s[:-1])
            tgt[i, : len(s) - 1] = torch.tensor(s[1:])
        return inp, tgt

    def _loss(self, emb: torch.Tensor, inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        logits = self.model(emb, inp)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=-100)

    def _batches(self, n: int, gen: torch.Generator, lengths: list[int]) -> list[list[int]]:
        return length_batches(n, self.cfg.batch_size, gen, lengths)

    @torch.no_grad()
    def _eval_loss(self, seqs, embs) -> float:
        self.model.eval()
        total, count = 0.0, 0
        idx = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for i in range(0, len(idx), 256):
            b = idx[i:i + 256]
            inp, tgt = self._pad([seqs[j] for j in b])
            n = int((tgt != -100).sum())
            total += float(self._loss(embs[b].to(self.device), inp.to(self.device), tgt.to(self.device))) * n
            count += n
        return total / max(count, 1)

    # -- training -------------------------------------------------------------------------
    def fit(self, texts: Sequence[str], embs: torch.Tensor) -> dict[str, Any]:
        """Teacher-forced training on (text, embedding) pairs: AdamW, linear warm-up then cosine
        decay, gradient clipping, early stopping on a held-out split of the texts."""
        from cellnet_core.run import progress

        texts = [str(t) for t in texts]
        if len(texts) != embs.shape[0]:
            raise DataError(f"decoder '{self.kind}'.fit: {len(texts)} texts but {embs.shape[0]} embeddings")
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if not keep:
            raise DataError(f"decoder '{self.kind}'.fit: no non-empty texts to train on")
        texts = [texts[i] for i in keep]
        embs = embs[keep].detach().float().cpu()
        if self.embedding_dim is not None and embs.shape[1] != self.embedding_dim:
            raise ConfigError(f"decoder '{self.kind}': embeddings have {embs.shape[1]} dims, expected "
                              f"{self.embedding_dim}")
        self.embedding_dim = embs.shape[1]
        t0 = time.perf_counter()
        c = self.cfg
        gen = torch.Generator().manual_seed(self.seed)

        tr, va = split_by_text(texts, c.val_fraction, gen)

        self.tokenizer = train_tokenizer([texts[i] for i in tr], c.tokenizer, c.vocab_size, c.lowercase)
        self.model = self._make_model(self.tokenizer.get_vocab_size(), self.embedding_dim)
        seqs = self._encode_texts(texts)
        tr_seqs, va_seqs = [seqs[i] for i in tr], [seqs[i] for i in va]
        tr_emb, va_emb = embs[tr], embs[va]
        lengths = [len(s) for s in tr_seqs]

        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "A_log" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "A_log" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=c.lr, betas=(0.9, 0.98))
        steps_per_epoch = math.ceil(len(tr_seqs) / c.batch_size)
        planned = c.epochs  # shortened after the first epoch when max_seconds says so
        total = steps_per_epoch * planned
        warm = max(1, int(total * c.warmup))

        def lr_at(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total - warm)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        best, best_state, best_epoch, bad = float("inf"), None, 0, 0
        self.history = []
        bar = progress(range(1, c.epochs + 1), desc=f"fit {self.kind}", unit="epoch", log_every=30)
        for epoch in bar:
            self.model.train()
            run_loss, run_n = 0.0, 0
            for b in self._batches(len(tr_seqs), gen, lengths):
                inp, tgt = self._pad([tr_seqs[j] for j in b])
                e = tr_emb[b]
                if c.emb_noise > 0:
                    e = F.normalize(e, dim=-1) + c.emb_noise * torch.randn(e.shape, generator=gen) / math.sqrt(e.shape[1])
                loss = self._loss(e.to(self.device), inp.to(self.device), tgt.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip)
                opt.step()
                sched.step()
                run_loss += loss.item() * len(b)
                run_n += len(b)
            row = {"epoch": epoch, "train_loss": run_loss / max(run_n, 1), "lr": sched.get_last_lr()[0]}
            if va_seqs:
                row["val_loss"] = self._eval_loss(va_seqs, va_emb)
            self.history.append(row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k.endswith("loss")})
            score = row.get("val_loss", row["train_loss"])
            if score < best - 1e-4:
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy(self.model.state_dict())
            else:
                bad += 1
                if va_seqs and bad >= c.patience:
                    break
            if c.max_seconds and epoch == 1:
                # fit the whole warm-up + cosine schedule into the time budget
                per_epoch = time.perf_counter() - t0
                planned = max(1, min(c.epochs, int(c.max_seconds // max(per_epoch, 1e-9))))
                total = steps_per_epoch * planned
            if epoch >= planned:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        return {"epochs": len(self.history), "stopped_early": len(self.history) < planned,
                "planned_epochs": planned, "best_epoch": best_epoch, "best_loss": best,
                "seconds": time.perf_counter() - t0, "parameters": self.num_parameters(),
                "vocab": self.tokenizer.get_vocab_size(), "train_texts": len(tr_seqs), "val_texts": len(va_seqs),
                "history": self.history}

    # -- generation -----------------------------------------------------------------------
    def _opts(self) -> GenerationOptions:
        c = self.cfg
        return GenerationOptions(bos=self.tokenizer.token_to_id(BOS), eos=self.tokenizer.token_to_id(EOS),
                                 max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.top_k,
                                 top_p=c.top_p, repetition_penalty=c.repetition_penalty,
                                 length_penalty=c.length_penalty)

    def _check_emb(self, emb: torch.Tensor) -> torch.Tensor:
        self._require()
        if emb.dim() != 2 or emb.shape[1] != self.embedding_dim:
            raise ConfigError(f"decoder '{self.kind}': expected embeddings [B, {self.embedding_dim}], "
                              f"got {list(emb.shape)}")
        return emb.detach().float().to(self.device)

    def _acceptable(self, text: str) -> bool:
        """False for an empty text and, with ``filter_degenerate``, for a degenerate one."""
        if not text.strip():
            return False
        options = filter_options(self.cfg)
        return options is None or not is_degenerate(text, **options)

    def generate(self, emb: torch.Tensor, strategy: str | None = None, beams: int | None = None) -> list[str]:
        """``[B, D]`` → B texts with ``strategy`` (default: the config's); ``""`` where the text
        written is degenerate (``filter_degenerate``)."""
        emb = self._check_emb(emb)
        strategy = strategy or self.cfg.strategy
        self.model.eval()
        out: list[str] = []
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        for i in range(0, emb.shape[0], self.cfg.batch_decode):
            e = emb[i:i + self.cfg.batch_decode]
            if strategy == "beam":
                rows = beam_search(self.model, e, self._opts(), beams or self.cfg.beams)
                out += [decode_ids(self.tokenizer, r[0][0]) if r else "" for r in rows]
            else:
                ids = generate(self.model, e, self._opts(), sample=strategy == "sample", generator=gen)
                out += [decode_ids(self.tokenizer, r) for r in ids]
        return [t if self._acceptable(t) else "" for t in out]

    def samples(self, emb: torch.Tensor, n: int) -> list[list[str]]:
        """Up to ``n`` sampled texts per row (the config's temperature / top_k / top_p), in one
        seeded pass over ``n`` copies of each embedding: the same call gives the same texts.
        Degenerate samples are left out."""
        if emb.shape[0] == 0 or n <= 0:
            return [[] for _ in range(emb.shape[0])]
        texts = self.generate(emb.repeat_interleave(n, dim=0), "sample")
        return [[t for t in texts[i * n:(i + 1) * n] if t] for i in range(emb.shape[0])]

    def decode(self, emb: torch.Tensor) -> list[str]:
        """``emb [B, D]`` → B generated sentences (the configured generation strategy)."""
        if emb.shape[0] == 0:
            return []
        return self.generate(emb)

    def candidates(self, emb: torch.Tensor, k: int = 5) -> list[list[Candidate]]:
        """Beam hypotheses (width ``max(k, beams)``), score = length-normalised log-probability;
        empty and (``filter_degenerate``) degenerate texts are left out, so a row may hold fewer
        than ``k``."""
        if emb.shape[0] == 0:
            return []
        emb = self._check_emb(emb)
        self.model.eval()
        width = max(k, self.cfg.beams)
        out = []
        for i in range(0, emb.shape[0], self.cfg.batch_decode):
            for row in beam_search(self.model, emb[i:i + self.cfg.batch_decode], self._opts(), width):
                seen, cands = set(), []
                for ids, score in row:
                    text = decode_ids(self.tokenizer, ids)
                    if text not in seen and self._acceptable(text):
                        seen.add(text)
                        cands.append(Candidate(text, score))
                out.append(cands[:k])
        return out

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> list[Path]:
        """Write ``weights.safetensors``, ``tokenizer.json`` and ``decoder.json`` (config, vocabulary
        size, tokenizer hash). An untrained decoder writes only ``decoder.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format": FORMAT, "version": __version__, "kind": self.kind,
                                "config": self.cfg.model_dump(mode="json"), "trained": self.trained}
        files = []
        if self.trained:
            atomic_write_text(directory / TOKENIZER_FILE, self.tokenizer.to_str(pretty=False))
            save_tensors(directory / WEIGHTS_FILE, self.model.state_dict(), metadata={"format": FORMAT})
            meta.update(tokenizer_sha256=sha256_file(directory / TOKENIZER_FILE),
                        vocab_size=self.tokenizer.get_vocab_size(), embedding_dim=self.embedding_dim,
                        parameters=self.num_parameters(),
                        history=[{k: float(v) for k, v in r.items()} for r in self.history])
            files += [directory / WEIGHTS_FILE, directory / TOKENIZER_FILE]
        atomic_write_json(directory / META_FILE, meta)
        return files + [directory / META_FILE]

    def load(self, directory: str | Path) -> None:
        """Read what :meth:`save` wrote. A tokenizer that is not the one the weights were trained
        with (other hash or vocabulary size) or other architecture settings raise CheckpointError."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        meta = read_decoder_meta(directory / META_FILE, FORMAT, self.kind, self.cfg,
                                 ARCHITECTURE_FIELDS[self.kind] + ("tokenizer", "lowercase", "normalize_input"))
        if not meta.get("trained"):
            self.model, self.tokenizer = None, None
            return
        tok_path = directory / TOKENIZER_FILE
        if not tok_path.exists():
            raise CheckpointError(f"{tok_path}: missing")
        digest = sha256_file(tok_path)
        if digest != meta.get("tokenizer_sha256"):
            raise CheckpointError(f"{tok_path}: tokenizer does not match the decoder (sha256 {digest[:12]}…, "
                                  f"the decoder was trained with {str(meta.get('tokenizer_sha256'))[:12]}…)")
        try:
            tok = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception on bad JSON
            raise CheckpointError(f"{tok_path}: damaged ({exc})") from None
        vocab = tok.get_vocab_size()
        if vocab != meta.get("vocab_size") or tok.token_to_id(PAD) != 0:
            raise CheckpointError(f"{tok_path}: tokenizer has {vocab} entries, the decoder expects "
                                  f"{meta.get('vocab_size')}")
        tensors = load_tensors(directory / WEIGHTS_FILE)
        rows = tensors.get("tok.weight")
        if rows is None or rows.shape[0] != vocab:
            raise CheckpointError(f"{directory / WEIGHTS_FILE}: embedding table has "
                                  f"{None if rows is None else rows.shape[0]} rows, the tokenizer {vocab} entries")
        emb_dim = saved_embedding_dim(directory / META_FILE, meta, self.embedding_dim)
        model = load_strict(self._make_model(vocab, emb_dim), tensors, directory / WEIGHTS_FILE, "decoder")
        self.tokenizer, self.model, self.embedding_dim = tok, model, emb_dim
        self.history = meta.get("history", [])


def _build(cfg, ctx) -> GenerativeDecoder:
    dim = getattr(ctx, "embedding_dim", None) if ctx is not None else None
    seed = getattr(ctx, "seed", 0) if ctx is not None else 0
    device = getattr(ctx, "device", None) if ctx is not None else None
    return GenerativeDecoder(cfg, embedding_dim=dim, seed=seed or 0, device=device)


def build_ret(cfg, ctx) -> GenerativeDecoder:
    """Factory of the ``ret`` decoder."""
    return _build(cfg, ctx)


def build_cct_mamba(cfg, ctx) -> GenerativeDecoder:
    """Factory of the ``cct-mamba`` decoder."""
    return _build(cfg, ctx)
