"""Two local processes joined by `jax.distributed` (4 CPU devices each) train exactly like
one process with 8 devices: same loss trajectory, same parameters, one set of logs."""
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxrl_reward import metrics as metrics_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multihost_worker.py"
TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, output, *, local_devices, process_id=None, num_processes=1, port=None, **env_extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(env_extra)
  env["WORKER_LOCAL_DEVICES"] = str(local_devices)
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  if process_id is not None:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
  # Output to a file, not a pipe: a full pipe would block one process inside a collective.
  log = pathlib.Path(f"{output}.{process_id or 0}.log")
  with open(log, "w") as f:
    proc = subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(output)], cwd=ROOT, env=env,
                            stdout=f, stderr=subprocess.STDOUT)
  proc.log = log
  return proc


def _wait_all(procs):
  """Waits for every process within the time bound; kills them all on a failure or timeout."""
  try:
    outputs = []
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
      out = p.log.read_text()
      outputs.append(out)
      if p.returncode != 0:
        raise AssertionError(f"worker exited with {p.returncode}:\n{out[-3000:]}")
    return outputs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _metrics(workdir):
  return metrics_lib.read_metrics(workdir / "metrics.jsonl")


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  port = _free_port()
  multi = _wait_all([_launch(tmp_path / "multi", tmp_path / "multi.npz", local_devices=4, process_id=i,
                             num_processes=2, port=port) for i in range(2)])
  assert "process 0 of 2 done" in multi[0] and "process 1 of 2 done" in multi[1]
  # The reference runs after, not beside: oversubscribed cores slow the collectives' polling.
  single = _wait_all([_launch(tmp_path / "single", tmp_path / "single.npz", local_devices=8)])
  assert "process 0 of 1 done" in single[0]

  single_rows, multi_rows = _metrics(tmp_path / "single"), _metrics(tmp_path / "multi")
  assert [r["step"] for r in single_rows] == [r["step"] for r in multi_rows]
  losses = [r["loss/total"] for r in multi_rows if "loss/total" in r]
  assert len(losses) == 2 and any(abs(v) > 1e-6 for v in losses)  # the GRPO steps do learn
  for a, b in zip(single_rows, multi_rows):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)

  single_params, multi_params = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
  assert sorted(single_params.files) == sorted(multi_params.files)
  for k in single_params.files:
    np.testing.assert_allclose(multi_params[k], single_params[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # Both processes saved the sharded state into one set of checkpoints.
  assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]


@pytest.mark.slow
def test_dead_peer_is_one_line_in_bounded_time(tmp_path):
  """Process 1 is killed mid-run: process 0 says so in one line and exits, well before
  jax.distributed's own 100 s heartbeat timeout."""
  port = _free_port()
  procs = [_launch(tmp_path / "run", tmp_path / "out.npz", local_devices=4, process_id=i, num_processes=2, port=port,
                   WORKER_RL_STEPS="40", WORKER_PEER_TIMEOUT_S="10") for i in range(2)]
  try:
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train/stage": 1.0') >= 1):
      assert procs[0].poll() is None and procs[1].poll() is None, procs[0].log.read_text()[-3000:]
      time.sleep(0.2)
    procs[1].kill()
    killed = time.time()
    procs[0].wait(timeout=90)
    waited = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  out = procs[0].log.read_text()
  assert procs[0].returncode == 1, out[-3000:]
  errors = [line for line in out.splitlines() if line.startswith("error: process 0 of 2")]
  assert len(errors) == 1, out[-3000:]
  assert "process 1 sent no heartbeat for 10 s" in errors[0] and "the last checkpoint: step" in errors[0]
  assert waited < 60
