"""Configs of the training strategies (no torch import here: listing and validating stay cheap)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SerializeAsAny, ValidationError, ValidationInfo, WithJsonSchema,
                      WrapValidator, field_validator, model_serializer)

from cellnet_core.config import ComponentConfig, validate_registered

ValMetric = Literal["auto", "map", "mrr", "pooled_mrr", "recall@1", "recall@10", "cosine", "loss"]
#: objectives that ``mix`` can add beside a strategy's own
MixName = Literal["autoencoder", "dialogue"]


# -- losses (kind ``loss``; selected by ``training.loss``) -----------------------------------------
class CosineLossConfig(ComponentConfig):
    """``1 − cos(prediction, true answer)``, averaged over the batch."""

    name: Literal["cosine"] = "cosine"


class MSELossConfig(ComponentConfig):
    """Squared L2 distance to the true answer (summed over D), averaged over the batch."""

    name: Literal["mse"] = "mse"


class InfoNCELossConfig(ComponentConfig):
    """Cross-entropy of the true answer among the batch's candidate answers (cosine logits / τ)."""

    name: Literal["infonce"] = "infonce"
    temperature: Optional[float] = Field(None, gt=0.0, le=10.0,
                                         description="softmax temperature τ; default: the strategy's temperature")


class TripletLossConfig(ComponentConfig):
    """``relu(margin − cos(pred, true) + cos(pred, hardest wrong candidate))``."""

    name: Literal["triplet"] = "triplet"
    margin: Optional[float] = Field(None, ge=0.0, le=2.0, description="margin on cosine; default: the strategy's margin")


#: the losses that exist without a registry at hand (a config built directly in Python)
BUILTIN_LOSSES: dict[str, type[ComponentConfig]] = {
    "cosine": CosineLossConfig, "mse": MSELossConfig, "infonce": InfoNCELossConfig, "triplet": TripletLossConfig}


class LossTerm(BaseModel):
    """One weighted term of ``training.loss``: a registered loss's validated config and its weight.
    Written (and read) flat, as in YAML: ``{name: infonce, weight: 1.0, temperature: 0.1}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    config: SerializeAsAny[ComponentConfig] = Field(..., description="the loss (a registered loss's config)")
    weight: float = Field(1.0, ge=0.0, le=1000.0, description="weight of this term in the sum")
    #: the registry entry the config was validated against (builds the loss; None: a built-in loss)
    _entry: Any = PrivateAttr(None)

    @property
    def name(self) -> str:
        """The loss's registered name."""
        return self.config.name

    @property
    def entry(self) -> Any:
        """The registry entry of the loss (``None`` when validated without a registry)."""
        return self._entry

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {**data["config"], "weight": data["weight"]}


def _term(item: Any, context: dict | None, loc: tuple[Any, ...]) -> LossTerm:
    from pydantic_core import InitErrorDetails, PydanticCustomError

    if isinstance(item, LossTerm):
        return item
    weight: Any = 1.0
    if isinstance(item, dict):
        item = dict(item)
        weight = item.pop("weight", 1.0)
        ok = isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0.0 <= weight <= 1000.0
        if not ok:
            raise ValidationError.from_exception_data("loss", [InitErrorDetails(
                type=PydanticCustomError("value_error", "a weight between 0 and 1000"), loc=loc + ("weight",),
                input=weight)])
    config = validate_registered("loss", item, context, builtin=BUILTIN_LOSSES, loc=loc)
    term = LossTerm(config=config, weight=float(weight))
    registry = (context or {}).get("registry")
    if registry is not None:
        term._entry = registry.get("loss", config.name)
    return term


def loss_terms(value: Any, registry: Any = None, context: dict | None = None) -> list[LossTerm]:
    """``training.loss`` as a list of :class:`LossTerm`: from a name (``infonce``), one mapping
    (``{name: infonce, temperature: 0.1}``) or a list of names and mappings with ``weight``.
    Names are checked against ``registry`` (or ``context["registry"]``), else the built-in losses."""
    ctx = dict(context or {})
    if registry is not None:
        ctx["registry"] = registry
    if isinstance(value, (str, dict, LossTerm)):
        return _some_weight([_term(value, ctx, ())])
    if not isinstance(value, (list, tuple)):
        from pydantic_core import InitErrorDetails, PydanticCustomError

        raise ValidationError.from_exception_data("loss", [InitErrorDetails(
            type=PydanticCustomError("value_error", "a loss name, a mapping {name: ...} or a list of them"),
            loc=(), input=value)])
    if not value:
        from pydantic_core import InitErrorDetails, PydanticCustomError

        raise ValidationError.from_exception_data("loss", [InitErrorDetails(
            type=PydanticCustomError("value_error", "give at least one loss term"), loc=(), input=value)])
    return _some_weight([_term(item, ctx, (i,)) for i, item in enumerate(value)])


def _some_weight(terms: list[LossTerm]) -> list[LossTerm]:
    """``terms``, unless every weight is 0: that sum has no gradient and the run would train nothing."""
    if any(t.weight > 0 for t in terms):
        return terms
    from pydantic_core import InitErrorDetails, PydanticCustomError

    raise ValidationError.from_exception_data("loss", [InitErrorDetails(
        type=PydanticCustomError("value_error", "every loss term has weight 0, so nothing would be trained; "
                                                "give at least one term a weight above 0"),
        loc=(), input=[t.weight for t in terms])])


def _validate_loss(value: Any, handler: Any, info: ValidationInfo) -> list[LossTerm]:
    return loss_terms(value, context=info.context)


#: ``training.loss``: a registered loss by name, one mapping, or a weighted list of them
LossSpec = Annotated[list[LossTerm], WrapValidator(_validate_loss), WithJsonSchema({
    "anyOf": [{"type": "string"}, {"type": "object", "required": ["name"]},
              {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "string"}, {
                  "type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
                                                                         "weight": {"type": "number"}}}]}}],
    "description": "a registered loss by name, or a weighted list [{name: infonce, weight: 1}, ...] "
                   "(cellnet components --kind loss)"})]


class OptimisationConfig(ComponentConfig):
    """Options every gradient-trained strategy shares (optimiser, schedule, loss, validation)."""

    epochs: int = Field(30, ge=0, le=100000, description="training epochs (passes over the training pairs)")
    batch_size: int = Field(64, ge=1, le=65536, description="pairs per optimisation step (global, over all processes)")
    accumulate: int = Field(
        1, ge=1, le=4096, description="gradient accumulation: one optimisation step over accumulate × batch_size "
                                      "pairs, run through the lattice batch_size at a time (the same update as "
                                      "that larger batch, in-batch negatives included; memory of one batch)")
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
    loss: LossSpec = Field(
        "infonce", validate_default=True,
        description="a registered loss by name (cosine, mse, infonce, triplet, or a plugin's) or a weighted list "
                    "[{name: infonce, weight: 1}, {name: cosine, weight: 0.5}]; a term may set its loss's options")
    temperature: float = Field(0.05, gt=0.0, le=10.0,
                               description="infonce softmax temperature (a term's own temperature wins)")
    margin: float = Field(0.2, ge=0.0, le=2.0, description="triplet margin on cosine (a term's own margin wins)")
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
                            "split's pooled answers. pooled_mrr: the pooled ranking on any dataset (on selection "
                            "data each question against all the split's answers). auto: map on selection data, "
                            "mrr otherwise")
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
    loss: LossSpec = Field(
        "cosine", validate_default=True,
        description="a registered loss by name or a weighted list of {name, weight, options}")
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
    loss: LossSpec = Field(
        "cosine", validate_default=True,
        description="a registered loss by name or a weighted list of {name, weight, options}")
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

    def check_run(self, run: Any, registry: Any) -> None:
        """Each teacher's encoder config against the registry (name and fields), at validation time:
        an unknown or misspelt teacher is reported before any model loads."""
        for i, teacher in enumerate(self.teachers):
            registry.config_for("encoder", teacher.encoder, where=f"training.teachers[{i}].encoder")


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
