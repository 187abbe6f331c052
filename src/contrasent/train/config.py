"""Training configuration: nested dataclasses, one section per concern.

The CLI is generated from these classes (``contrasent.cli.parse`` reads the field types and the
docstrings), so a YAML recipe mirrors them::

    model: {name_or_path: bert-base-uncased, pooling: cls_before_pooler}
    objective: {name: simcse_unsup, temperature: 0.05, mlp: true}   # typed per objective
    data: {kind: text, path: wiki1m_for_simcse.txt, epochs: 1, max_seq_length: 32}
    train: {batch_size: 64, lr: 3.0e-5, seed: 42}
    eval: {every_steps: 125, metric: stsb}
    output_dir: runs/unsup-simcse-bert

and any field can be overridden: ``--train.lr 1e-5``, ``--objective.temperature 0.1``.

A recipe may also list ``stages`` (:func:`contrasent.train.stages.stage_configs`): runs in
sequence in one call, each starting from the previous stage's final (or best) encoder
(ConSERT's sup-unsup and joint-unsup).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal

from contrasent.core.errors import UserError
from contrasent.core.options import build
from contrasent.data.registry import DataSpec
from contrasent.model.pooling import Pooling

MixedPrecision = Literal["no", "fp16", "bf16", "auto"]


@dataclass
class ModelConfig:
    """The encoder to start from.

    Attributes:
        name_or_path: Hugging Face hub id, local model folder or sentence-transformers
            folder.
        pooling: Pooling over token states; default: the folder's own
            (sentence-transformers) or mean.
        normalize: L2-normalise the saved model's embeddings; default: the folder's own or
            off.
        max_seq_length: The encoder's inference length: evaluation truncates here and the
            saved model records it; default: the base model's limit. Training truncation is
            ``data.max_seq_length``.
        keep_layers: Keep only these transformer layers (indices from 0, increasing), e.g.
            [0, 2, 4]: a smaller student built from the model (distillation); default: all.
    """

    name_or_path: str = ""
    pooling: Pooling | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    keep_layers: list[int] | None = None


@dataclass
class OptimConfig:
    """Batching, optimisation and precision.

    Attributes:
        batch_size: GLOBAL batch: rows per optimizer (micro-)step over all processes, i.e.
            the number of in-batch candidates each row is contrasted with. Must divide by
            the number of processes; each process takes its contiguous equal slice.
        max_steps: Optimizer steps to run; 0: ``data.epochs`` passes over the data (needs
            their length: ``data.scan``). The run also ends when the data runs out.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay; never applied to biases and normalisation weights.
        warmup_steps: Linear warm-up steps (exclusive with ``warmup_ratio``).
        warmup_ratio: Warm-up as a fraction of the total steps (exclusive with
            ``warmup_steps``).
        lr_schedule: After warm-up: ``linear`` decay to 0 at the last step, or ``constant``;
            or ``slanted_triangular`` (ULMFiT; allennlp's, the DeCLUTR reference's): from
            lr/ratio up to lr over the first ``cut_frac`` of the steps, then back down to
            lr/ratio at the last step (its own warm-up: no warmup_steps/warmup_ratio).
        cut_frac: ``slanted_triangular``: fraction of the steps spent rising (ULMFiT: 0.1).
        ratio: ``slanted_triangular``: how much smaller the first and last lr are than the peak
            (ULMFiT: 32).
        adam_eps: AdamW's epsilon, added to the square root of the second moment (torch's
            default 1e-8; the DeCLUTR and ConSERT references: 1e-6).
        adam_bias_correction: Divide Adam's moments by ``1 - beta^t`` (torch's AdamW, the
            default). false: the raw moments, transformers' old ``AdamW(correct_bias=False)``
            (DeCLUTR, ConSERT): early updates several times larger; weight decay is applied
            after the update, as that optimizer does.
        grad_clip: Clip the global gradient norm to this value; 0: off.
        grad_accum: Batches whose gradients are summed per optimizer step. This does NOT add
            negatives: each batch is still contrasted only within itself. Use
            ``mini_batch_size`` for a larger batch of negatives under a memory limit.
        mini_batch_size: Gradient cache (Gao et al. 2021): texts per encoder forward on each
            process while the loss sees the whole batch; 0: off (one forward for the whole
            batch). With ``length_buckets`` > 1 the rows are sorted by length before they are
            cut into mini-batches (each one pass, padded only to its own rows).
        mixed_precision: Autocast precision: ``fp16`` (CUDA, with loss scaling), ``bf16``
            (CUDA Ampere+ or CPU; the losses' similarity matmuls and cross-entropies stay
            fp32); ``auto``: bf16 on a GPU that has it, else fp16; on a CPU bf16 where it has
            fast bf16 matmuls (AMX or AVX512-BF16; `contrasent env`), else ``no``.
        threads: CPU threads of each process; 0: every usable CPU (the CLI sets OpenMP's
            passive wait, OMP_WAIT_POLICY=PASSIVE, unless given); with an active wait policy
            every CPU while the machine has room, fewer when it is loaded ($OMP_NUM_THREADS if
            set; `contrasent env` shows it).
        seed: Seed of model-head initialisation, data order and dropout.
        length_buckets: Run each encoder pass of a step as this many passes over rows of
            similar length (sorted by token count, each padded only to its own longest row),
            outputs put back in row order: padding tokens cost full compute, and a batch of
            mixed lengths is mostly padding (SNLI triplets: 60%). The loss is the one-pass
            loss up to float rounding; dropout draws differ (same distribution). Default 4
            (the resume, gradient-cache and multi-process equivalences hold with it; the
            README says which recipe figures were measured with it); 1: off (one pass padded
            to the batch's longest).
            Applies to the encoder's sentence passes and TSDAE's decoder (over target lengths;
            its LM head then runs once, on the real tokens), not to an MLM pass (DeCLUTR's
            masked anchors included) nor to embedding-level augmentations; a pass is only
            split where that removes >= 3% of its token slots. The word embeddings of all rows
            are looked up once before the split (BERT, RoBERTa, XLM-R, DistilBERT, MPNet: the
            lookup's backward writes a dense [vocab, hidden] gradient per call). On CPU
            (MiniLM, batch 32, length 32) 4 made a step 1.25x (unsup SimCSE) to 1.9x (SNLI
            triplets) faster (bench/profile_step.py); on a GPU, measure first: small passes may
            leave it idle.
        compile: ``torch.compile`` the encoder's transformer (dynamic shapes; the first steps
            compile, their time is written to ``metrics.jsonl`` as a ``compile`` record and
            shown). Off where torch.compile is unavailable (a warning); graphs that fail to
            compile run eagerly. Dropout draws differ from eager (same distribution). On this
            project's CPU it measured no faster (MiniLM, fp32); meant for GPUs.
        fast_dropout: Draw the dropout masks of CPU training four elements per 64-bit random
            word (``model/dropout.py``) instead of ``bernoulli_``'s one draw per element: the
            drop probability is ``p`` rounded to 1/65536, kept elements scaled to keep the
            expectation; same distribution, different draws (as ``length_buckets``), same
            generator (seeding, resume and the gradient cache's replay cover it). Covers the
            ``nn.Dropout`` modules and, for models on transformers' attention interface with
            ``sdpa`` attention (BERT, RoBERTa, XLM-R, ...), the attention probabilities' dropout
            (torch's SDPA runs an unfused math path with ``bernoulli_`` masks when it drops).
            A run resumes with the draw it started with. No effect on a GPU or in evaluation.
            Default true; false: torch's dropout.
    """

    batch_size: int = 64
    max_steps: int = 0
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    lr_schedule: Literal["linear", "constant", "slanted_triangular"] = "linear"
    cut_frac: float = 0.1
    ratio: float = 32.0
    adam_eps: float = 1e-8
    adam_bias_correction: bool = True
    grad_clip: float = 1.0
    grad_accum: int = 1
    mini_batch_size: int = 0
    mixed_precision: MixedPrecision = "no"
    seed: int = 42
    length_buckets: int = 4
    compile: bool = False
    fast_dropout: bool = True
    threads: int = 0


@dataclass
class EvalConfig:
    """Periodic evaluation (STS, or your own task files) and best-model selection.

    Attributes:
        every_steps: Evaluate every this many optimizer steps (SimCSE: 125); 0: only at the
            end.
        at_start: Evaluate the starting model before the first step (a "before" number for
            the run; it also competes for ``best/``).
        at_end: Evaluate after the last step.
        at_epoch_end: Also evaluate after the step that ends each pass over the data (the
            sentence-transformers ``fit`` that ConSERT's reference runs does; patience counts
            these evaluations too). One evaluation where it meets ``every_steps``. Needs a
            known epoch length (not ``data.scan: false`` or a mixture without ``lines``).
        mode: ``dev``: STS-B dev + SICK-R trial (model selection); ``test``: every STS task.
        data_dir: SentEval ``data/downstream`` folder; default: ``$CONTRASENT_DATA``.
        tasks: What to evaluate, as ``contrasent eval --tasks`` takes it (a list or a comma
            list): your own task files (``retrieval:PATH``, ``NAME=pairs:PATH``, ``sts:PATH``,
            ``reranking:PATH``, ``clustering:PATH``) and built-in STS names (``stsb``,
            ``sickr``, ...); ``[]``: none (only ``validation_loss``, with
            ``data.validation``). Default: the STS tasks of ``mode``.
        metric: Selection metric: ``stsb`` (STS-B dev Spearman, SimCSE's), ``sickr``, ``avg``,
            ``NAME.METRIC`` of a task file (e.g. ``askubuntu.map``; ``NAME`` alone: its kind's
            main metric), ``validation_loss`` (the objective's loss on ``data.validation``:
            lower is better), or a dotted path into the results, e.g.
            ``tasks.STSBenchmark.pearson.dev``. Higher is better unless said. Default:
            ``stsb``; with ``tasks`` the first task's main metric; with ``tasks: []``
            ``validation_loss``.
        keep_best: Save the best model by ``metric`` to ``output_dir/best``.
        batch_size: Sentences per forward while evaluating.
        patience: Stop training after this many evaluations in a row without a new best
            ``metric`` (ConSERT: 10); 0: never stop early.
    """

    every_steps: int = 0
    at_start: bool = False
    at_end: bool = True
    at_epoch_end: bool = False
    mode: Literal["dev", "test"] = "dev"
    data_dir: str | None = None
    tasks: list[str] | str | None = None
    metric: str | None = None
    keep_best: bool = True
    batch_size: int = 128
    patience: int = 0


@dataclass
class CheckpointConfig:
    """Resumable training checkpoints (``output_dir/checkpoints/step-N``).

    Attributes:
        every_steps: Save every this many optimizer steps, and after the last one; 0: never.
        keep_last: Keep only the newest this many checkpoints; 0: keep all.
    """

    every_steps: int = 1000
    keep_last: int = 2


@dataclass
class LoggingConfig:
    """Progress bar, metrics file and TensorBoard.

    Attributes:
        log_every: Write averaged training metrics to ``metrics.jsonl`` every this many
            steps.
        tensorboard: Also write TensorBoard events to ``output_dir/tensorboard`` (when it is
            installed).
        progress_bar: Show a tqdm bar (loss, lr, sentences/s, ETA) on the main process.
    """

    log_every: int = 10
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class TrainConfig:
    """One training run: every method goes through the same loop.

    Attributes:
        model: The encoder to start from.
        objective: ``name`` of the objective plus its options, e.g. ``{name: simcse_unsup,
            temperature: 0.05}`` (override one with ``--objective.temperature 0.1``). The
            objectives and their options are listed at the end of ``contrasent train --help``;
            one objective's: ``contrasent train --objective.help NAME``.
        data: Training data (``contrasent.data.registry.DataSpec``): what to read, epochs,
            shuffling, batching.
        train: Batching, optimisation and precision.
        eval: Periodic STS evaluation and best-model selection.
        checkpoint: Resumable checkpoints.
        logging: Progress bar, metrics file and TensorBoard.
        output_dir: Run folder: ``final/`` and ``best/`` (sentence-transformers models),
            ``checkpoints/``, ``metrics.jsonl``, ``config.json``, ``tensorboard/``.
        resume_from: Resume from a checkpoint folder, or ``latest`` (newest in
            ``output_dir``; fresh start when there is none).
        overwrite_output_dir: Allow a fresh run in an ``output_dir`` that already holds
            checkpoints (they are deleted).
        stages: Several runs in sequence, each a mapping that may set ``name``, ``objective``,
            ``data`` (each replacing the top-level one), ``train``, ``eval``, ``checkpoint``,
            ``logging`` and ``model`` (pooling, normalize, max_seq_length; merged key by key
            over the top-level ones). Stage ``i`` starts from stage ``i-1``'s encoder, its
            ``final/`` or, with ``init_from: best``, its ``best/`` (ConSERT's second stage loads
            the first stage's best checkpoint), and writes ``output_dir/stage-<i>-<name>/``.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "simcse_unsup"})
    data: DataSpec = field(default_factory=DataSpec)
    train: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_dir: str = "runs/contrasent"
    resume_from: str | None = None
    overwrite_output_dir: bool = False
    stages: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ helpers

    @property
    def objective_name(self) -> str:
        return str(self.objective.get("name", ""))

    @property
    def objective_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.objective.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from nested mappings (a parsed YAML file, a jsonargparse Namespace's dict)."""
        if is_dataclass(data):
            data = asdict(data)
        return build(cls, data, {})

    def _resolve_metric(self) -> None:
        """Check ``eval.tasks`` (the files exist, the kinds are known) and settle
        ``eval.metric`` (its default depends on the tasks; ``NAME`` means NAME's main metric)."""
        from contrasent.eval.metric_paths import resolve_metric

        self.eval.metric = resolve_metric(
            self.eval.tasks, self.eval.metric, self.data.validation is not None
        )

    def validate(self, world_size: int = 1) -> None:
        """Raise :class:`UserError` for every inconsistent setting (no model or data is loaded:
        objective options, data kind and batch type, gradient-cache support are checked too)."""
        if self.stages:
            from contrasent.train.stages import stage_configs  # stages.py imports this module

            for _, stage in stage_configs(self):
                stage.validate(world_size)
            return
        self._validate_numbers(world_size)
        check_objective_and_data(self)

    def _validate_numbers(self, world_size: int) -> None:
        t = self.train
        if not self.model.name_or_path:
            raise UserError("model.name_or_path is required")
        if self.model.max_seq_length is not None and self.model.max_seq_length < 1:
            raise UserError(f"model.max_seq_length must be >= 1, got {self.model.max_seq_length}")
        if not self.objective_name:
            raise UserError("objective.name is required (e.g. simcse_unsup, simcse_sup, pairs)")
        if t.batch_size < 1:
            raise UserError(f"train.batch_size must be >= 1, got {t.batch_size}")
        if t.batch_size % world_size:
            raise UserError(
                f"train.batch_size={t.batch_size} (the global batch) does not divide by the "
                f"{world_size} processes; use a multiple of {world_size}"
            )
        for name in ("grad_accum", "length_buckets"):
            if getattr(t, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(t, name)}")
        for name in ("max_steps", "mini_batch_size", "warmup_steps", "threads"):
            if getattr(t, name) < 0:
                raise UserError(f"train.{name} must be >= 0, got {getattr(t, name)}")
        if t.max_steps == 0 and self.data.epochs is None:
            raise UserError("endless data (data.epochs: null) needs train.max_steps > 0")
        if not 0.0 <= t.warmup_ratio < 1.0:
            raise UserError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
        if t.warmup_steps and t.warmup_ratio:
            raise UserError("set train.warmup_steps or train.warmup_ratio, not both")
        if t.lr <= 0 or t.weight_decay < 0 or t.grad_clip < 0:
            raise UserError("train.lr must be > 0, weight_decay and grad_clip >= 0")
        self._check_schedule()
        if self.eval.every_steps < 0 or self.checkpoint.every_steps < 0:
            raise UserError("eval.every_steps and checkpoint.every_steps must be >= 0")
        self._resolve_metric()
        if self.eval.metric == "validation_loss" and self.data.validation is None:
            raise UserError(
                "eval.metric validation_loss needs held-out data: set data.validation to a "
                "file, or to a fraction (0.01) or row count of the training rows to hold out",
                "eval.metric",
            )
        if self.eval.batch_size < 1:
            raise UserError(f"eval.batch_size must be >= 1, got {self.eval.batch_size}")
        if self.checkpoint.keep_last < 0:
            raise UserError(f"checkpoint.keep_last must be >= 0, got {self.checkpoint.keep_last}")
        if self.eval.patience < 0:
            raise UserError(f"eval.patience must be >= 0, got {self.eval.patience}")
        if self.eval.patience and not (self.eval.every_steps or self.eval.at_epoch_end):
            raise UserError(
                "eval.patience needs periodic evaluation: set eval.every_steps > 0 "
                "(or eval.at_epoch_end: true)"
            )
        if self.logging.log_every < 1:
            raise UserError(f"logging.log_every must be >= 1, got {self.logging.log_every}")
        if not self.output_dir:
            raise UserError("output_dir is required")

    def _check_schedule(self) -> None:
        t = self.train
        if not 0.0 < t.cut_frac < 1.0 or t.ratio < 1.0:
            raise UserError(
                f"train.cut_frac must be in (0, 1) and train.ratio >= 1, got {t.cut_frac}, "
                f"{t.ratio}"
            )
        if t.lr_schedule == "slanted_triangular" and (t.warmup_steps or t.warmup_ratio):
            raise UserError(
                "train.lr_schedule slanted_triangular warms up by itself (train.cut_frac): "
                "set train.warmup_steps and train.warmup_ratio to 0"
            )
        if not t.adam_eps > 0:
            raise UserError(f"train.adam_eps must be > 0, got {t.adam_eps}")


def check_objective_and_data(cfg: TrainConfig) -> None:
    """The objective's options, the data kind, and that they fit together (before any loading).

    The objective consumes one batch type and the data kind yields one: they must agree. An
    objective whose step the gradient cache cannot run refuses ``train.mini_batch_size``.
    """
    from contrasent.data.registry import data_kind, data_options
    from contrasent.objectives import objective_class, objective_config

    cls = objective_class(cfg.objective_name)
    objective_config(cfg.objective_name, cfg.objective_options)
    cfg.data.check()
    data_options(cfg.data)
    kind = data_kind(cfg.data.kind)
    if not issubclass(kind.batch_type, cls.batch_type):
        from contrasent.data.registry import DATA_KINDS

        fits = sorted(n for n, k in DATA_KINDS.items() if issubclass(k.batch_type, cls.batch_type))
        raise UserError(
            f"objective {cls.name} consumes {cls.batch_type.__name__} batches but data.kind "
            f"{cfg.data.kind!r} yields {kind.batch_type.__name__}; use data.kind "
            f"{' or '.join(fits) or '(none registered)'}"
        )
    if cfg.train.mini_batch_size and not cls.supports_gradient_cache:
        raise UserError(
            f"objective {cls.name} does not run under the gradient cache (train.mini_batch_size="
            f"{cfg.train.mini_batch_size}): set train.mini_batch_size: 0"
            + (f" ({cls.gradient_cache_hint})" if getattr(cls, "gradient_cache_hint", "") else "")
        )


def as_train_config(config: Any) -> TrainConfig:
    """Accept a :class:`TrainConfig`, a mapping, or a jsonargparse ``Namespace``."""
    if isinstance(config, TrainConfig):
        return config
    if hasattr(config, "as_dict"):  # jsonargparse Namespace (nested dataclasses left as objects)
        config = config.as_dict()
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    raise TypeError(f"expected TrainConfig or a mapping, got {type(config).__name__}")
