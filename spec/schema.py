"""The spec language's sections as pydantic models: the single source of truth for their keys.

Layer entries stay plain mappings here: each layer type owns its parameter schema in its own file
under `compiler/layers/`, and the compiler validates them against the layer registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPEC_VERSION = 1

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=128)]
Dtype = Literal["float32", "float64", "int32", "int64", "uint8"]
LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy",
          "binary_crossentropy", "mse", "mae", "huber")
Loss = Literal["categorical_crossentropy", "sparse_categorical_crossentropy",
               "binary_crossentropy", "mse", "mae", "huber"]
METRICS = ("accuracy", "top_k_accuracy", "precision", "recall", "f1", "auc", "mae", "rmse",
           "r2")
Metric = Literal["accuracy", "top_k_accuracy", "precision", "recall", "f1", "auc", "mae",
                 "rmse", "r2"]
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
DATA_SOURCES = ("digits", "mnist", "fashion_mnist", "npz", "npy", "csv", "parquet", "images")
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 21, 21


class SpecModel(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InputSpec(SpecModel):
    """One named model input; `shape` excludes the batch dimension (`null` for a free length)."""

    shape: list[Annotated[int, Field(gt=0)] | None] = Field(min_length=1, max_length=8)
    dtype: Dtype = "float32"


class LossSpec(SpecModel):
    """A loss and its options. `loss: mse` is short for `loss: {name: mse}`."""

    name: Loss
    label_smoothing: float = Field(default=0.0, ge=0, lt=1,
                                   description="cross-entropies only")
    delta: float = Field(default=1.0, gt=0, description="huber only")
    class_weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="per-class weights of the samples (classifiers)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class OutputSpec(SpecModel):
    """One named model output, taken from a layer (by default the last one), with its own
    loss, loss weight and metrics when it is trained (else the `train` section's)."""

    from_: Name | None = Field(default=None, alias="from")
    labels: list[str] | None = Field(default=None, description="class names, index order")
    loss: LossSpec | None = None
    loss_weight: float = Field(default=1.0, ge=0)
    metrics: list[Metric] | None = None
    argmax: bool = Field(default=False, description="also export NAME_class: the index of "
                         "the largest value (the predicted class)")


class ScheduleSpec(SpecModel):
    """A learning-rate schedule over optimizer steps (warmup and decay counted in epochs when
    `*_epochs` is given). `reduce_on_plateau` watches the monitored metric after each epoch."""

    name: Literal["constant", "step", "exponential", "cosine", "warmup_cosine",
                  "reduce_on_plateau"] = "constant"
    decay_rate: float = Field(default=0.1, gt=0, le=1, description="step, exponential")
    decay_epochs: float = Field(default=10, gt=0, description="step, exponential: epochs "
                                "per decay by decay_rate")
    warmup_epochs: float = Field(default=0, ge=0, description="warmup_cosine")
    alpha: float = Field(default=0.0, ge=0, le=1, description="cosine: final fraction")
    factor: float = Field(default=0.1, gt=0, lt=1, description="reduce_on_plateau")
    patience: int = Field(default=5, ge=0, description="reduce_on_plateau")
    min_learning_rate: float = Field(default=0.0, ge=0, description="reduce_on_plateau")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class OptimizerSpec(SpecModel):
    """An Optax optimizer. `optimizer: adam` is short for `optimizer: {name: adam}`."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]
    learning_rate: float = Field(default=1e-3, gt=0)
    schedule: ScheduleSpec = ScheduleSpec()
    momentum: float | None = Field(default=None, ge=0, lt=1, description="sgd, rmsprop")
    nesterov: bool = Field(default=False, description="sgd only")
    b1: float = Field(default=0.9, ge=0, lt=1, description="adam, adamw")
    b2: float = Field(default=0.999, ge=0, lt=1, description="adam, adamw")
    eps: float = Field(default=1e-8, gt=0, description="adam, adamw, rmsprop, adagrad")
    weight_decay: float = Field(default=1e-4, ge=0, description="adamw only: decoupled decay")
    decay: float = Field(default=0.9, gt=0, lt=1, description="rmsprop only")
    clip_norm: float | None = Field(default=None, gt=0, description="clip gradients by "
                                    "global norm")
    accumulate: int = Field(default=1, ge=1, description="average gradients over this many "
                            "batches before each update")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class RegularizationSpec(SpecModel):
    """Penalties on weights added to the loss, as the classic texts define them (distinct from
    adamw's decoupled weight decay): l2 * sum(w**2) + l1 * sum(|w|) over the kernels and
    embeddings of `layers` (default: every layer), never biases or normalization scales."""

    l2: float = Field(default=0.0, ge=0)
    l1: float = Field(default=0.0, ge=0)
    layers: list[str] | None = None


class EarlyStoppingSpec(SpecModel):
    """Stop when `monitor` has not improved for `patience` epochs; optionally restore the
    weights of the best epoch."""

    monitor: str = "val_loss"
    mode: Literal["min", "max", "auto"] = "auto"
    patience: int = Field(default=5, ge=0)
    min_delta: float = Field(default=0.0, ge=0)
    restore_best: bool = True


class AugmentSpec(SpecModel):
    """One augmentation, applied on the device inside the training step to the named inputs
    (default: all image-like inputs); never part of the exported model."""

    type: Literal["random_flip", "random_translate", "random_crop", "random_rotation",
                  "random_brightness", "random_contrast", "gaussian_noise", "mixup"]
    inputs: list[str] | None = None
    mode: Literal["horizontal", "vertical", "both"] = "horizontal"
    factor: float = Field(default=0.1, ge=0, description="translate: fraction of the size; "
                          "rotation: fraction of a full turn; brightness/contrast: strength")
    padding: int = Field(default=2, ge=0, description="random_crop: pixels padded first")
    stddev: float = Field(default=0.1, ge=0, description="gaussian_noise")
    alpha: float = Field(default=0.2, gt=0, description="mixup: Beta(alpha, alpha)")


class CheckpointSpec(SpecModel):
    """Checkpoints (Orbax) in RUN/checkpoints: parameters, optimizer state, step, data order."""

    every_epochs: int = Field(default=5, ge=1)
    every_steps: int | None = Field(default=None, ge=1, description="also save every this "
                                    "many steps (global step count), mid-epoch included")
    keep: int = Field(default=2, ge=1)


class TrainSpec(SpecModel):
    """How to train: epochs, batches, optimizer, loss, metrics and the seed of the whole run."""

    epochs: int = Field(ge=1, le=100_000)
    batch_size: int = Field(default=32, ge=1, le=1 << 20)
    optimizer: OptimizerSpec = OptimizerSpec(name="adam")
    loss: LossSpec | None = Field(default=None, description="the loss of every output that "
                                  "does not name its own")
    metrics: list[Metric] = Field(default_factory=list)
    top_k: int = Field(default=5, ge=1, description="k of top_k_accuracy")
    seed: int = Field(default=0, ge=0, lt=1 << 32)
    regularization: RegularizationSpec = RegularizationSpec()
    early_stopping: EarlyStoppingSpec | None = None
    augment: list[AugmentSpec] = Field(default_factory=list)
    init_from: str | None = Field(default=None, description="a run directory or an .onnx "
                                  "file whose weights (matched by node name) start training")
    unfreeze_after: int | None = Field(default=None, ge=0, description="epochs after which "
                                       "layers with `trainable: false` are trained too")
    precision: Literal["float32", "bfloat16"] = Field(
        default="float32", description="compute dtype; weights stay float32")
    checkpoint: CheckpointSpec = CheckpointSpec()
    loop: Literal["auto", "fused", "step"] = Field(
        default="auto", description="'fused': many steps per compiled call (a loop on the "
        "device); 'step': one call per step; 'auto': fused, except convolutions on the CPU, "
        "which XLA:CPU runs slowly inside a loop")
    pipeline: Literal["auto", "device", "stream"] = Field(
        default="auto", description="'device': the training set lives on the device and each "
        "batch is gathered there; 'stream': batches are read on the host by Grain (ahead of "
        "the step; decoding sources in worker processes, `data.workers`) and transferred by a "
        "background thread; 'auto': device when the set takes under half the device's "
        "memory (a quarter of RAM on the CPU)")


class ColumnSpec(SpecModel):
    """Table columns that feed one input (or give one output's targets), in order.

    Numeric columns are gathered into a float vector; a categorical column becomes integer ids
    (0 is out-of-vocabulary; the vocabulary, sorted, is learned from the training split) or,
    with `encoding: one_hot`, a 0/1 vector of the vocabulary size plus one. A categorical
    output column gives the classifier's class names (its sorted values, or `outputs.NAME.labels`
    when given). `NAME: x` is short for `NAME: {columns: [x]}`, `NAME: [x, y]` for
    `NAME: {columns: [x, y]}`.
    """

    columns: list[str] = Field(min_length=1, description="column names in the file, in order")
    type: Literal["auto", "numeric", "categorical"] = Field(
        default="auto", description="auto: numeric when 90% of the present values parse "
        "as numbers (the others are reported as bad rows)")
    encoding: Literal["ids", "one_hot"] = Field(default="ids", description="categorical inputs")
    missing: Literal["fail", "mean", "mode", "constant", "oov"] | None = Field(
        default=None, description="empty/NA cells: fail (numeric default), the training mean, "
        "the most frequent value, fill_value, or the out-of-vocabulary id (categorical default)")
    fill_value: float | str | None = Field(default=None, description="missing: constant")

    @model_validator(mode="after")
    def _fill_for_constant(self) -> ColumnSpec:
        if self.missing == "constant" and self.fill_value is None:
            raise ValueError("`fill_value` is required when missing is 'constant'")
        if self.missing == "mean" and self.type == "categorical":
            raise ValueError("missing: mean needs numeric columns (categorical: mode, "
                             "constant or oov)")
        if self.missing == "oov" and self.type == "numeric":
            raise ValueError("missing: oov needs a categorical column")
        return self


class DataSpec(SpecModel):
    """Where the data comes from and how it is split.

    `digits` ships with nnspec; `mnist` and `fashion_mnist` download once (checksummed) into a
    cache; `npz` reads `x`/`y` (or `x_train`/`y_train`/`x_test`/`y_test`) from `path`, relative
    to the spec file; `npy` memory-maps a folder of `NAME.npy` files (one per input and
    output; for sets larger than memory, streamed); `array_record` reads ArrayRecord files,
    one sample a record (`nnspec.compiler.data.arrayrecord`), read lazily and streamed. `csv`
    and `parquet` read a table whose
    `columns` map to the inputs and outputs by name; `images` reads a folder with one
    subfolder per class (or a CSV of path,label), decoded with Pillow to each image input's
    shape.
    """

    source: Literal["digits", "mnist", "fashion_mnist", "npz", "npy", "array_record", "csv",
                    "parquet", "images"]
    path: str | None = None
    columns: dict[Name, ColumnSpec | list[str] | str] | None = Field(
        default=None, description="csv/parquet: the columns of each input and output, by name "
        "(one column, a list, or an object with options)")
    resize: Literal["none", "resize"] = Field(
        default="none", description="images: 'resize' to the input's size (bilinear, as "
        "`nnspec predict` does); 'none': every image must have the input's size")
    on_error: Literal["fail", "skip"] = Field(
        default="fail", description="a bad row or image: fail (every problem listed), or skip "
        "it and report how many and which")
    validation_split: float = Field(default=0.1, ge=0, lt=1)
    test_split: float = Field(default=0.2, ge=0, lt=1,
                              description="used only when the source has no test split")
    limit: int | None = Field(default=None, ge=1, description="use at most this many samples")
    seed: int = Field(default=0, ge=0, lt=1 << 32, description="seed of the shuffles and splits")
    workers: int | Literal["auto"] = Field(
        default="auto", description="Grain worker processes decoding a streamed set; auto: "
        "min(2, cores) for sources that decode (array_record, streamed images), 0 for npy and "
        "arrays")

    def column_specs(self) -> dict[str, ColumnSpec]:
        """`columns` with every shorthand spelled out."""
        return {k: v if isinstance(v, ColumnSpec) else ColumnSpec(
            columns=[v] if isinstance(v, str) else list(v))
            for k, v in (self.columns or {}).items()}

    @model_validator(mode="after")
    def _path_for_npz(self) -> DataSpec:
        if self.source in ("npz", "npy", "array_record", "csv", "parquet", "images") and (
                not self.path):
            raise ValueError(f"`path` is required when source is {self.source!r}")
        if isinstance(self.workers, int) and self.workers < 0:
            raise ValueError(f"`workers` must be 0 or more (or auto), got {self.workers}")
        if self.source in ("csv", "parquet") and not self.columns:
            raise ValueError(f"`columns` is required when source is {self.source!r}: the "
                             "columns of each input and output")
        return self


class ParitySpec(SpecModel):
    """The cross-check of the exported ONNX model against the trained Flax model."""

    samples: int = Field(default=256, ge=1, le=100_000)
    atol: float = Field(default=1e-5, gt=0)
    rtol: float = Field(default=1e-5, ge=0)


class QuantizeSpec(SpecModel):
    """A smaller copy of the exported model (`model.METHOD.onnx`), kept only when it loses at
    most `max_drop` accuracy on the validation split; `nnspec quantize` does the same for a
    finished run. `quantize: static` is short for `quantize: {method: static}`."""

    method: Literal["dynamic", "static", "float16"]
    max_drop: float = Field(default=0.01, ge=0, le=1, description="largest accuracy loss "
                            "allowed, as a fraction (0.01: one point); regressors: relative "
                            "increase of the MAE")
    per_channel: bool = Field(default=True, description="int8: one scale per output channel")
    calibration_samples: int = Field(default=256, ge=1, le=100_000, description="static: "
                                     "training samples that calibrate activation ranges")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value


class ExportSpec(SpecModel):
    """How the trained model is exported."""

    opset: int = Field(default=DEFAULT_OPSET, ge=MIN_OPSET, le=MAX_OPSET)
    parity: ParitySpec = ParitySpec()
    quantize: QuantizeSpec | None = None


class BlockSpec(SpecModel):
    """A reusable list of layers with parameters (`$name` in a value; `$input` as a reference
    to the block's input)."""

    params: dict[str, Any] = Field(default_factory=dict,
                                   description="parameter defaults; null makes one required")
    layers: list[dict[str, Any]] = Field(min_length=1)


class Spec(SpecModel):
    """A whole spec: the model (`inputs`, `layers`, `outputs`) and its training and export."""

    version: int = Field(description=f"spec format version; this nnspec reads {SPEC_VERSION}")
    name: Name
    description: str = ""
    inputs: dict[Name, InputSpec] = Field(min_length=1)
    layers: list[dict[str, Any]] = Field(min_length=1)
    blocks: dict[Name, BlockSpec] | None = None
    outputs: dict[Name, OutputSpec] | None = None
    data: DataSpec | None = None
    train: TrainSpec | None = None
    export: ExportSpec = ExportSpec()

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > SPEC_VERSION:
            raise ValueError(f"spec version {value} is newer than this nnspec reads "
                             f"({SPEC_VERSION}); upgrade nnspec")
        if value != SPEC_VERSION:
            raise ValueError(f"expected version {SPEC_VERSION}")
        return value
