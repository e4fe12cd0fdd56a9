"""Configs of the training strategies (no torch import here: listing and validating stay cheap)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cellnet_core.config import ComponentConfig

LossName = Literal["cosine", "mse", "infonce", "triplet"]
ValMetric = Literal["auto", "map", "mrr", "recall@1", "recall@10", "cosine", "loss"]
#: objectives that ``mix`` can add beside a strategy's own
MixName = Literal["autoencoder", "dialogue"]


class LossTerm(BaseModel):
    """One weighted term of a combined loss: ``{name: infonce, weight: 1.0}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: LossName = Field(..., description="cosine | mse | infonce | triplet")
    weight: float = Field(1.0, ge=0.0, le=1000.0, description="weight of this term in the sum")


class OptimisationConfig(ComponentConfig):
    """Options every gradient-trained strategy shares (optimiser, schedule, loss, validation)."""

    epochs: int = Field(30, ge=0, le=100000, description="training epochs (passes over the training pairs)")
    batch_size: int = Field(64, ge=1, le=65536, description="pairs per optimisation step (global, over all processes)")
    lr: float = Field(1.0e-3, gt=0.0, le=10.0, description="peak learning rate")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd (with momentum)")
    weight_decay: float = Field(0.01, ge=0.0, le=10.0, description="decoupled weight decay (adamw) / L2 (sgd)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum (ignored by adamw)")
    schedule: Literal["constant", "cosine", "plateau"] = Field(
        "cosine", description="learning-rate schedule after warm-up: constant, cosine decay to min_lr_ratio·lr "
                              "over the run, or plateau (multiply by plateau_factor after plateau_patience "
                              "epochs without validation improvement)")
    warmup_epochs: float = Field(1.0, ge=0.0, le=1000.0,
                                 description="linear warm-up from 0 to lr over this many epochs (fractions allowed)")
    min_lr_ratio: float = Field(0.05, ge=0.0, le=1.0, description="cosine schedule ends at this fraction of lr")
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0, description="plateau schedule: lr multiplier on a plateau")
    plateau_patience: int = Field(2, ge=0, le=1000, description="plateau schedule: epochs without improvement")
    lr_scale: dict[Literal["reshaper", "core"], Annotated[float, Field(ge=0.0, le=1000.0)]] = Field(
        default_factory=dict, description="learning-rate multiplier per pipeline part, e.g. {reshaper: 0.1}; "
                                          "0 freezes that part (default: 1 for every part)")
    grad_clip: float = Field(1.0, ge=0.0, le=1.0e6, description="clip the gradient norm to this (0: off)")
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="autocast: auto = bf16 on CUDA devices that support it, off on CPU")
    loss: Union[LossName, list[LossTerm]] = Field(
        "infonce", description="a loss name or a weighted list [{name: infonce, weight: 1}, {name: cosine, weight: 0.5}]")
    temperature: float = Field(0.05, gt=0.0, le=10.0, description="infonce softmax temperature")
    margin: float = Field(0.2, ge=0.0, le=2.0, description="triplet margin on cosine")
    hard_negatives: int = Field(0, ge=0, le=256,
                                description="answers mined from the answer bank per question (highest cosine to "
                                            "the current prediction, the true answer excluded), refreshed every "
                                            "mine_every epochs; used by infonce and triplet")
    mine_every: int = Field(1, ge=1, le=1000, description="re-mine hard negatives every this many epochs")
    selection_negatives: bool = Field(
        True, description="for datasets with answer selection, add the labelled wrong candidates as negatives")
    val_metric: ValMetric = Field(
        "auto", description="validation metric for early stopping and best checkpoint. On datasets with answer "
                            "selection (selection('val')) map and mrr rank each question's own candidates, as "
                            "'cellnet eval' does; otherwise mrr, recall@1 and recall@10 rank the validation "
                            "split's pooled answers. auto: map on selection data, mrr otherwise")
    early_stopping: int = Field(5, ge=0, le=100000,
                                description="stop after this many epochs without validation improvement (0: off)")
    restore_best: bool = Field(True, description="end with the weights of the best validation epoch")
    max_val_questions: int = Field(2000, ge=1, le=10**7, description="validate on at most this many questions")
    fit_decoder: bool = Field(True, description="after training, fit the decoder on the training answers")
    plots: bool = Field(True, description="write training-curve PNGs into the run directory")
    init_from: Optional[str] = Field(
        None, description="warm start: a run directory whose weights.safetensors (manifest verified, every "
                          "tensor's shape checked) replace the reshaper and core weights before epoch 0")
    input_noise: float = Field(
        0.0, ge=0.0, le=10.0, description="standard deviation of Gaussian noise added to each component of the "
                                          "input embeddings in training steps (never in validation); seeded by "
                                          "(seed, epoch, step), so a resumed run is unchanged")
    mix: dict[MixName, Annotated[float, Field(gt=0.0, le=1000.0)]] = Field(
        default_factory=dict, description="a second objective in the same run with its weight, e.g. "
                                          "{autoencoder: 0.3}: loss = own loss + 0.3 × reconstruction (cosine) of "
                                          "the training texts; {dialogue: w} beside autoencoder adds w × infonce "
                                          "of question → answer")

    @field_validator("loss")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one loss term")
        return v

    @field_validator("init_from")
    @classmethod
    def _init_from(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("give a run directory or leave init_from out")
        return v

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        own = cls.model_fields["name"].default
        same = {"autoencoder": {"autoencoder"}}.get(own, {"dialogue"})
        clash = sorted(set(v) & same)
        if clash:
            raise ValueError(f"'{clash[0]}' is this strategy's own objective; mix adds the other one "
                             f"({'dialogue' if own == 'autoencoder' else 'autoencoder'})")
        return v


class AutoencoderConfig(OptimisationConfig):
    """Train reshaper + core so that an embedding comes back as itself through the lattice."""

    name: Literal["autoencoder"] = "autoencoder"
    loss: Union[LossName, list[LossTerm]] = Field(
        "cosine", description="a loss name or a weighted list of {name, weight}")
    source: Literal["texts", "pairs"] = Field(
        "texts", description="texts: the dataset's texts(split); pairs: questions and answers of pairs(split)")


class DialogueConfig(OptimisationConfig):
    """Train reshaper + core to map a question's embedding onto its answer's."""

    name: Literal["dialogue"] = "dialogue"


class CurriculumConfig(OptimisationConfig):
    """Dialogue ordered easy → hard by the baseline cosine of each pair (question vs answer
    embedding), with a competence schedule: the easiest fraction c(epoch) of pairs is used."""

    name: Literal["curriculum"] = "curriculum"
    competence: Literal["sqrt", "linear"] = Field(
        "sqrt", description="c(t) = sqrt(t·(1−c0²)/T + c0²) (Platanios et al. 2019) or linear c0 + t·(1−c0)/T")
    start_fraction: float = Field(0.3, gt=0.0, le=1.0, description="c0: fraction of (easiest) pairs in epoch 1")
    full_at: float = Field(0.5, gt=0.0, le=1.0,
                           description="T as a fraction of epochs: competence reaches 1 at epoch full_at·epochs")


class TeacherConfig(BaseModel):
    """One teacher of the distillation ensemble."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    encoder: dict[str, Any] = Field(..., description="an encoder config, e.g. {name: minilm}")
    weight: float = Field(1.0, gt=0.0, le=1000.0, description="weight of this teacher in the ensemble")


class DistillConfig(OptimisationConfig):
    """Multi-teacher distillation: the student (reshaper + core) maps a question's embedding onto
    the ensemble of teachers' embeddings of the answer, each projected to the student's size D."""

    name: Literal["distill"] = "distill"
    loss: Union[LossName, list[LossTerm]] = Field(
        "cosine", description="a loss name or a weighted list of {name, weight}")
    teachers: list[TeacherConfig] = Field(
        default_factory=lambda: [TeacherConfig(encoder={"name": "hashing", "dim": 384})],
        description="teacher encoders (sub-configs built through the registry) with weights")
    projection: Literal["auto", "random", "none"] = Field(
        "auto", description="how a teacher of size ≠ D is mapped to D: a fixed seeded random (JL) projection; "
                            "auto: identity when sizes match, random otherwise")

    @field_validator("teachers")
    @classmethod
    def _teachers(cls, v: list[TeacherConfig]) -> list[TeacherConfig]:
        if not v:
            raise ValueError("give at least one teacher")
        for t in v:
            if "name" not in t.encoder:
                raise ValueError("each teacher's encoder needs a 'name'")
        return v


class DecoderTrainingConfig(ComponentConfig):
    """Fit the pipeline's decoder on texts and their teacher embeddings (decoders with ``fit``)."""

    name: Literal["decoder"] = "decoder"
    source: Literal["answers", "texts", "both"] = Field(
        "answers", description="answers: the answers of pairs(split); texts: texts(split); both")
    include_val: bool = Field(False, description="also fit on the validation split")
    max_texts: int = Field(0, ge=0, le=10**8, description="use at most this many texts, a seeded sample (0: all)")


class ListwiseConfig(ComponentConfig):
    """Listwise training of a pair-scoring pipeline on answer-selection data (cellnet_training.listwise)."""

    name: Literal["listwise"] = "listwise"
    epochs: int = Field(10, ge=0, le=100000, description="passes over the training questions")
    batch_size: int = Field(32, ge=1, le=65536, description="questions per optimisation step")
    lr: float = Field(1.0e-3, gt=0.0, le=10.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0.0, le=10.0, description="AdamW decoupled weight decay")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="after warm-up: constant or cosine decay")
    warmup_epochs: float = Field(0.5, ge=0.0, le=1000.0, description="linear warm-up over this many epochs")
    min_lr_ratio: float = Field(0.05, ge=0.0, le=1.0, description="cosine schedule ends at this fraction of lr")
    lr_scale: dict[Literal["reshaper", "core"], Annotated[float, Field(ge=0.0, le=1000.0)]] = Field(
        default_factory=dict, description="learning-rate multiplier per part; 0 freezes it")
    temperature: float = Field(0.05, gt=0.0, le=10.0, description="softmax temperature τ over each question's candidates")
    in_batch: int = Field(4, ge=0, le=1024, description="right answers of this many other questions of the batch "
                                                        "join each question's candidates as negatives")
    max_candidates: int = Field(32, ge=0, le=10000, description="own candidates per question and step (positives "
                                                                "always kept, wrong ones sampled; 0: all)")
    grad_clip: float = Field(1.0, ge=0.0, le=1.0e6, description="clip the gradient norm to this (0: off)")
    val_metric: Literal["map", "mrr"] = Field(
        "map", description="validation on each question's own candidates: map or mrr (early stopping, best checkpoint)")
    early_stopping: int = Field(3, ge=0, le=100000, description="stop after this many epochs without improvement (0: off)")
    restore_best: bool = Field(True, description="end with the weights of the best validation epoch (0: the untrained scorer)")
    max_train_questions: Optional[int] = Field(None, ge=1, le=10**7, description="train on at most this many questions "
                                                                                 "(the first of the split; scaling curves)")
    max_val_questions: int = Field(2000, ge=1, le=10**7, description="validate on at most this many questions")
    fit_decoder: bool = Field(True, description="after training, fit the decoder on the training answer sentences")
    init_from: Optional[str] = Field(None, description="warm start from another run's weights.safetensors (shapes checked)")
    progress_seconds: float = Field(60.0, gt=0.0, le=86400.0, description="within an epoch, a progress line on "
                                                                           "stderr at most this often")


class ContextConfig(OptimisationConfig):
    """Train reshaper + core to map the last k turns of a conversation (their embeddings
    concatenated, oldest first; missing earlier turns are zeros) onto the next turn's embedding.
    Needs a conversation dataset (context items) and a reshaper with slots (context-planes)."""

    name: Literal["context"] = "context"
    turns: Optional[int] = Field(None, ge=1, le=64, description="turns per question k; default (and must equal) "
                                                                "the reshaper's slots")

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        # both objectives differ from this one: single-turn dialogue runs as the latest turn alone
        return v

    def check_run(self, run: Any, registry: Any) -> None:
        """The reshaper takes several turns (has ``slots``), as many as ``turns`` when given."""
        reshaper = getattr(run, "reshaper", None)
        slots = getattr(reshaper, "slots", None)
        if slots is None:
            raise ValueError(f"strategy 'context' feeds the last turns of a conversation to a reshaper with slots "
                             f"(context-planes); reshaper '{getattr(reshaper, 'name', '?')}' takes one embedding")
        if self.turns is not None and self.turns != slots:
            raise ValueError(f"turns: {self.turns} turns per question, but reshaper.slots is {slots}; make them "
                             f"equal (or leave turns out)")
