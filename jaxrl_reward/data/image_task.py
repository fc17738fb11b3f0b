"""Image tasks for class-conditional diffusion models: `digits` (8x8) and `mnist_subset` (28x28).

The prompts of an image task are condition ids (`data.images.condition_ids`: a class, or a
(class, style) pair). An `ImageTask` holds:

- `train` / `eval`: the prompt examples of the RL stage and of its evaluation, one per
  condition: `{"prompt": id, "label": class}`. `task.num_prompts` picks that many conditions
  (a seeded choice among those present in the training images; 0: every condition); the
  evaluation samples the same conditions with fixed noise, the paper's setting of reward
  fine-tuning on a fixed prompt set.
- `train_images` / `eval_images`: the images that pre-train the denoiser and train the image
  models (reward model and guard), as `data.images.ImageSet` splits.
- `targets(split, name)`: the supervised target of an image model: "class" (the label), or
  "thickness" (the mean stroke width of `data.images.style_features`, standardised with the
  training split's mean and std), the attribute a learned reward model scores.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrl_reward.data import images as images_lib
from jaxrl_reward.data.task import Task

TARGETS = ("class", "thickness")


@dataclasses.dataclass
class ImageTask(Task):
  train_images: images_lib.ImageSet | None = None
  eval_images: images_lib.ImageSet | None = None
  _targets: dict = dataclasses.field(default_factory=dict, repr=False)  # (split, name) -> targets, computed once

  @property
  def num_conditions(self) -> int:
    return self.train_images.num_conditions

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.images.shape[1:])

  def targets(self, split: str, name: str) -> np.ndarray:
    """The `name` target (`TARGETS`) of every image of `split` ("train" or "eval")."""
    if name not in TARGETS:
      raise ValueError(f"unknown image target {name!r}; known: {TARGETS}")
    if (split, name) not in self._targets:
      self._targets[(split, name)] = self._compute_targets(split, name)
    return self._targets[(split, name)]

  def _compute_targets(self, split: str, name: str) -> np.ndarray:
    image_set = {"train": self.train_images, "eval": self.eval_images}[split]
    if name == "class":
      return image_set.labels
    thickness = images_lib.style_features(image_set.images)[0]
    reference = images_lib.style_features(self.train_images.images)[0]
    return ((thickness - reference.mean()) / reference.std()).astype(np.float32)


def build_task(task_config, seed: int) -> ImageTask:
  """The image task of `task_config` (`name`, `held_out`, `num_prompts`, optional style bins)."""
  name = task_config.name
  if name not in images_lib.NAMES:
    raise KeyError(f"unknown image task.name={name!r}; known: {images_lib.NAMES}")
  train, held = images_lib.load_splits(name, held_out=int(task_config.held_out), seed=seed,
                                       thickness_bins=task_config.get("thickness_bins"),
                                       slant_bins=task_config.get("slant_bins"))
  present = np.unique(train.conditions)
  num_prompts = int(task_config.get("num_prompts", 0) or 0)
  if num_prompts < 0 or num_prompts > len(present):
    raise ValueError(f"task.num_prompts={num_prompts} must be in [0, {len(present)}] (the conditions of "
                     f"{name!r} with training images; 0 takes them all)")
  chosen = np.sort(np.random.default_rng(seed).permutation(present)[:num_prompts]) if num_prompts else present
  labels, _ = images_lib.condition_parts(chosen, train.num_styles)
  prompts = [{"prompt": int(c), "label": int(label)} for c, label in zip(chosen, labels)]
  return ImageTask(tokenizer=None, train=prompts, eval=list(prompts), train_images=train, eval_images=held)
