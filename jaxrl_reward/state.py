"""Roles: the named models of a run, each with its structure, shardings and initialiser.

The training state is a dict of roles, each a dict with `params` and, while a stage trains
it, `opt_state`:

    {"policy": {"params": ..., "opt_state": ...},
     "reference": {"params": ...},                     # frozen; only when something needs it
     "prm": {"params": ..., "opt_state": ...}}          # further roles named in config.roles

- `policy` is always there: the model a task's prompts are sampled from, created from
  `config.model` (random initialisation, or a local Hugging Face folder `model.hf_path`).
- `reference` is a frozen copy of the policy taken when the RL stage starts; it exists only
  when the objective, a reward or another role's objective reads reference log-probs.
- Further roles come from `config.roles.<name>`: `kind` "lm" (a language model, scored by
  its log-probs: a process reward model) or "value" (`models.value.ValueModel`, scored by
  its values: a critic), or in a diffusion run (`config.model.kind="diffusion"`) "image"
  (`models.image_classifier.ImageClassifier`: a reward model or a guard, with
  `options.target` "class" or "thickness", trained by the pre-training stage); `init` "policy" (a copy of the policy when the role is created; for
  a value model, the backbone) or "random"; `trainable`, with its `objective`, `options`
  and learning rate `lr`.

Every role's parameters are created directly in their shardings (a jitted initialiser
with `out_shardings`; no full host copy), and each role gets its own optimizer state and
checkpoint entry.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_reward import sharding
from jaxrl_reward.policies import diffusion as diffusion_policy
from jaxrl_reward.policies import lm
from models import diffusion
from models import image_classifier
from models import transformer
from models import value as value_model

POLICY = "policy"
REFERENCE = "reference"
KINDS = ("lm", "value", "image")
MODEL_KINDS = ("lm", "diffusion")
INITS = ("policy", "random")


@dataclasses.dataclass(frozen=True)
class RoleSpec:
  """How a role is built and trained (see the module docstring)."""
  name: str
  kind: str = "lm"
  init: str = "policy"
  trainable: bool = False
  objective: str = ""
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  lr: float = 1e-5
  # A trainable role read by in-jit rewards: the RL stage updates it first and computes those
  # rewards again with the updated parameters (PRIME's update="before"); False scores with the
  # parameters before the update (one forward pass fewer).
  score_after_update: bool = False


def role_specs(config) -> dict[str, RoleSpec]:
  """The extra roles of `config.roles`, checked; errors name the key."""
  specs = {}
  for name, block in (config.get("roles") or {}).items():
    if name in (POLICY, REFERENCE):
      raise ValueError(f"config.roles.{name}: {name!r} is built in; name the extra role otherwise")
    block = dict(block)
    fields = {f.name for f in dataclasses.fields(RoleSpec)} - {"name"}
    unknown = sorted(set(block) - fields)
    if unknown:
      raise ValueError(f"config.roles.{name} has unknown key(s) {unknown}; a role takes {sorted(fields)}")
    spec = RoleSpec(name=name, **{k: (dict(v) if k == "options" else v) for k, v in block.items()})
    if spec.kind not in KINDS:
      raise ValueError(f"config.roles.{name}.kind={spec.kind!r} is not one of {KINDS}")
    if spec.init not in INITS:
      raise ValueError(f"config.roles.{name}.init={spec.init!r} is not one of {INITS}")
    if spec.score_after_update and not spec.trainable:
      raise ValueError(f"config.roles.{name}.score_after_update=True needs a trainable role "
                       f"(config.roles.{name}.trainable)")
    if spec.trainable and not spec.objective:
      raise ValueError(f"config.roles.{name} is trainable but names no objective "
                       f"(config.roles.{name}.objective)")
    if (spec.kind == "image") != (model_kind(config) == "diffusion"):
      raise ValueError(f"config.roles.{name}.kind={spec.kind!r} does not fit config.model.kind="
                       f"{model_kind(config)!r} (image roles go with diffusion runs, lm and value roles with "
                       "language models)")
    specs[name] = spec
  return specs


def model_kind(config) -> str:
  """`config.model.kind`: "lm" (default) or "diffusion"."""
  kind = config.model.get("kind", "lm")
  if kind not in MODEL_KINDS:
    raise ValueError(f"config.model.kind={kind!r} is not one of {MODEL_KINDS}")
  return kind


@dataclasses.dataclass
class Role:
  """A built role: its spec, structure, placement of its parameters and its scorer."""
  spec: RoleSpec
  graphdef: Any
  placement: sharding.Placement
  scorer: Any  # lm.LanguageModel or lm.ValueHead
  init: Any  # state -> params, jitted with the placement's out_shardings
  abstract_params: Any  # ShapeDtypeStructs of the parameters


def _seed(base: int, name: str) -> int:
  """A per-role seed: roles initialised at random do not share weights."""
  return (int(base) + zlib.crc32(name.encode())) % (2 ** 31)


class Roles:
  """Every role of a config, built on `mesh` (see the module docstring)."""

  def __init__(self, config, tokenizer, mesh, *, task=None):
    self.config = config
    self.mesh = mesh
    self.rules = sharding.rules_from_config(config)
    self.tokenizer = tokenizer
    self.specs = {POLICY: RoleSpec(POLICY, trainable=True), REFERENCE: RoleSpec(REFERENCE),
                  **role_specs(config)}
    self.roles: dict[str, Role] = {}
    if model_kind(config) == "diffusion":
      self._diffusion_roles(task)
      return
    self.model_config, policy_graphdef, policy_init = self._policy_structure()
    for name, spec in self.specs.items():
      if spec.kind == "value":
        self.roles[name] = self._value_role(spec)
      else:
        self.roles[name] = self._lm_role(spec, policy_graphdef, policy_init)

  def __getitem__(self, name: str) -> Role:
    if name not in self.roles:
      raise KeyError(f"no role {name!r}; the run's roles are {sorted(self.roles)} (extra roles come "
                     "from config.roles)")
    return self.roles[name]

  @property
  def policy(self) -> lm.LanguageModel:
    return self.roles[POLICY].scorer

  # -- structure -------------------------------------------------------------------------

  def _policy_structure(self):
    """(model config, graphdef, params initialiser without placement) of the policy."""
    cfg = self.config
    hf_path = cfg.model.get("hf_path", "")
    if hf_path:  # pretrained weights, read straight into their shardings
      from models import hf  # only runs that load a checkpoint need it
      loaded = hf.load(hf_path, dtype=cfg.model.dtype, mesh=self.mesh, rules=self.rules)
      if loaded.config.vocab_size < len(self.tokenizer):
        raise ValueError(f"model.hf_path={hf_path!r} has a vocabulary of {loaded.config.vocab_size} "
                         f"but the task's tokenizer has {len(self.tokenizer)} tokens")
      graphdef, weights, rest = nnx.split(loaded, nnx.Param, ...)
      _no_state(rest)
      return loaded.config, graphdef, lambda: weights
    vocab = -(-len(self.tokenizer) // 8) * 8  # round up: a multiple of 8 shards and tiles better
    model_config = transformer.get_config(cfg.model.name, vocab_size=vocab, dtype=cfg.model.dtype)
    make = lambda: transformer.Transformer(model_config, rngs=nnx.Rngs(cfg.seed))  # noqa: E731
    graphdef, _, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    _no_state(rest)
    return model_config, graphdef, lambda: nnx.split(make(), nnx.Param, ...)[1]

  def _placement(self, abstract_params) -> sharding.Placement:
    return sharding.placement_for(abstract_params, self.mesh, self.rules)

  def _lm_role(self, spec: RoleSpec, graphdef, policy_init) -> Role:
    abstract = jax.eval_shape(policy_init)
    placement = self._placement(abstract)
    copies_policy = spec.name == REFERENCE or (spec.name != POLICY and spec.init == "policy")
    if copies_policy:  # a copy of the policy as it is when the role is created
      copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=placement.params)
      init = functools.partial(_from_policy, copy)
    else:
      fresh = policy_init
      if spec.name != POLICY:
        cfg, seed = self.model_config, _seed(self.config.seed, spec.name)
        fresh = lambda: nnx.split(transformer.Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)[1]  # noqa: E731
      # A fresh copy per call: an update step donates (and so deletes) the buffers it gets.
      make = jax.jit(lambda: jax.tree.map(jnp.copy, fresh()), out_shardings=placement.params)
      init = lambda state: make()  # noqa: E731
    r = self.config.rollout
    scorer = lm.LanguageModel(graphdef, placement, self.tokenizer,
                              max_prompt_length=self.config.task.max_prompt_length,
                              max_new_tokens=self.config.task.max_completion_length,
                              temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)
    return Role(spec, graphdef, placement, scorer, init, abstract)

  def _value_role(self, spec: RoleSpec) -> Role:
    cfg, seed = self.model_config, _seed(self.config.seed, spec.name)
    make = lambda: nnx.split(value_model.ValueModel(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)[1]  # noqa: E731
    graphdef, abstract, rest = nnx.split(
        nnx.eval_shape(lambda: value_model.ValueModel(cfg, rngs=nnx.Rngs(seed))), nnx.Param, ...)
    _no_state(rest)
    placement = self._placement(abstract)
    if spec.init == "random":
      fresh = jax.jit(make, out_shardings=placement.params)
      init = lambda state: fresh()  # noqa: E731
    else:
      def with_backbone(policy_params):
        params = make()
        params["backbone"] = jax.tree.map(jnp.copy, policy_params)
        return params
      init = functools.partial(_from_policy, jax.jit(with_backbone, out_shardings=placement.params))
    return Role(spec, graphdef, placement, lm.ValueHead(graphdef, placement), init, abstract)

  def _diffusion_roles(self, task) -> None:
    """Policy and reference: a `models.diffusion.Denoiser`; extra roles: image models."""
    cfg = self.config
    if task is None or not hasattr(task, "image_shape"):
      raise ValueError("a diffusion run (config.model.kind='diffusion') needs an image task "
                       "(config.task.name 'digits' or 'mnist_subset')")
    size, _, channels = task.image_shape
    self.model_config = diffusion.get_config(cfg.model.name, image_size=size, channels=channels,
                                             num_conditions=task.num_conditions)
    d = cfg.diffusion
    schedule = diffusion.linear_schedule(int(d.get("train_steps", 1000)))
    for name, spec in self.specs.items():
      if spec.kind == "image":
        target = dict(spec.options).get("target", "class")
        model_cfg = image_classifier.ClassifierConfig(image_size=size, channels=channels,
                                                      outputs=10 if target == "class" else 1)
        make = lambda m=model_cfg, n=name: image_classifier.ImageClassifier(m, rngs=nnx.Rngs(_seed(cfg.seed, n)))  # noqa: E731
      else:  # the policy (a fresh model from config.seed) and the reference (a copy of it)
        make = lambda: diffusion.Denoiser(self.model_config, rngs=nnx.Rngs(cfg.seed))  # noqa: E731
      graphdef, abstract, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
      _no_state(rest)
      placement = self._placement(abstract)
      if name == REFERENCE:
        init = functools.partial(_from_policy, jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                                       out_shardings=placement.params))
      else:
        fresh = jax.jit(lambda make=make: nnx.split(make(), nnx.Param, ...)[1], out_shardings=placement.params)
        init = lambda state, fresh=fresh: fresh()  # noqa: E731
      scorer = (diffusion_policy.ImageModel(graphdef, placement) if spec.kind == "image" else
                diffusion_policy.DiffusionPolicy(graphdef, placement, schedule, num_steps=int(d.num_steps),
                                                 eta=float(d.eta), guidance=float(d.guidance),
                                                 step_chunk=int(d.get("step_chunk", 0))))
      self.roles[name] = Role(spec, graphdef, placement, scorer, init, abstract)

  # -- state -----------------------------------------------------------------------------

  def create(self, name: str, state: Mapping[str, Any]):
    """Parameters of role `name` as it starts now (`state` holds the policy when it copies it)."""
    return self[name].init(state)


def _from_policy(build, state):
  """`build(policy parameters)`: a role that starts from the policy as it is in `state`."""
  if POLICY not in state:
    raise ValueError("a role initialised from the policy is created after the policy")
  return build(state[POLICY]["params"])


def _no_state(rest) -> None:
  if jax.tree.leaves(rest):
    raise ValueError("the model has non-parameter state, which the engine does not carry")
