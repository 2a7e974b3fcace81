from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import PROFILES, PretrainConfig
from pipeline.stages.pretrain.stage import deepspeed_config, launch_command


def _config(**kw) -> PretrainConfig:
    return PretrainConfig.model_validate({**PROFILES["tiny"]["pretrain"], **kw})


def test_deepspeed_config_generated_with_overrides() -> None:
    cfg = _config(zero_stage=2, grad_accum_steps=4, ds_overrides={
        "zero_optimization": {"overlap_comm": True}, "gradient_clipping": 0.5})
    ds = deepspeed_config(cfg, bf16=False)
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": False}
    assert ds["optimizer"]["params"]["lr"] == cfg.lr
    assert ds["scheduler"]["params"]["total_num_steps"] == cfg.max_steps
    z3 = deepspeed_config(_config(zero_stage=3), bf16=True)
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z3["bf16"] == {"enabled": True}


def test_offload_generates_cpu_adam_and_needs_zero() -> None:
    ds = deepspeed_config(_config(zero_stage=2, offload_optimizer=True), bf16=True)
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ds["optimizer"]["params"]["torch_adam"] is False
    with pytest.raises(ValidationError, match="offload_optimizer needs zero_stage 1, 2 or 3"):
        _config(offload_optimizer=True)
    with pytest.raises(ValidationError, match=r"eval_every \(15\) must be a multiple of log_e"):
        _config(eval_every=15)


def test_deepspeed_accepts_generated_config() -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = deepspeed_config(_config(zero_stage=2), bf16=False)
    parsed = DeepSpeedConfig(json.loads(json.dumps(ds)))
    assert parsed.zero_optimization_stage == 2 and parsed.gradient_clipping == 1.0


def test_launch_command_uses_deepspeed_launcher(tmp_path: Path) -> None:
    cmd = launch_command(_config(num_gpus=4), tmp_path / "spec.json", 29555)
    assert cmd[1:4] == ["-m", "deepspeed.launcher.runner", "--num_gpus"] and cmd[4] == "4"
    assert cmd[-4:] == ["--module", "pipeline.stages.pretrain.worker", "--spec",
                        str(tmp_path / "spec.json")]


def _env_of(cmd: list[str]) -> dict[str, str]:
    """The variables an ``env NAME=VALUE ... program`` command sets."""
    return dict(a.split("=", 1) for a in cmd[1:] if "=" in a)


def test_one_process_starts_the_worker_itself(tmp_path: Path) -> None:
    cmd = launch_command(_config(num_gpus=1), tmp_path / "spec.json", 29555)
    assert cmd[0] == "env" and "deepspeed.launcher.runner" not in cmd
    assert cmd[-5:] == ["-u", "-m", "pipeline.stages.pretrain.worker", "--spec",
                        str(tmp_path / "spec.json")]
    assert _env_of(cmd) == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555", "WORLD_SIZE": "1",
                   "RANK": "0", "LOCAL_RANK": "0", "LOCAL_SIZE": "1", "CROSS_RANK": "0",
                   "CROSS_SIZE": "1"}


@pytest.mark.slow
def test_one_process_environment_is_the_launchers(tmp_path: Path) -> None:
    """The variables a one-process command sets are those DeepSpeed's launcher gives its one
    rank, read from a script the real launcher starts."""
    import subprocess
    import sys

    names = ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_SIZE",
             "CROSS_RANK", "CROSS_SIZE"]
    script = tmp_path / "show_env.py"
    script.write_text("import json, os\nprint('ENV ' + json.dumps({k: os.environ.get(k) for k in "
                      f"{names!r}}}))\n")
    out = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1",
                          "--master_port", "29555", "--no_local_rank", str(script)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    launched = json.loads(next(line for line in out.splitlines() if line.startswith("ENV "))[4:])
    assert _env_of(launch_command(_config(num_gpus=1), tmp_path / "spec.json", 29555)) == launched


def test_a_resumed_build_whose_worker_finished_is_not_trained_again(tmp_path: Path) -> None:
    """A build that failed after its worker exported (say, writing its manifest) is resumed
    from its directory: the export stands, nothing trains again, and the checkpoint goes."""
    from pipeline.stages.pretrain import stage
    from pipeline.stages.pretrain.worker_io import WorkerSummary

    done = WorkerSummary(steps=4, tokens_trained=512, params=10, world_size=1,
                         final_train_loss=3.0, eval_loss=3.1, eval_perplexity=22.2,
                         tokens_per_s=100.0, param_digests=["x"],
                         checkpoint="checkpoint/global_step4")
    (tmp_path / "hf").mkdir()
    (tmp_path / "checkpoint/global_step4").mkdir(parents=True)
    (tmp_path / "launch.sh").write_text("deepspeed --num_gpus 1 -m worker --spec spec.json\n")
    (tmp_path / "summary.json").write_text(done.model_dump_json())
    out = stage.train(_config(), {"train": {"sequences": 64}, "eval": {"sequences": 4}},
                      tmp_path, tok_dir=tmp_path / "missing", base_dir=None, base_tok_dir=None,
                      eos_id=0, pad_id=0)
    assert out["cmd"] == ["deepspeed", "--num_gpus", "1", "-m", "worker", "--spec", "spec.json"]
    assert out["summary"].eval_loss == 3.1 and out["summary"].checkpoint is None
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "train.log").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["checkpoint"] is None


def test_the_last_step_is_checkpointed_only_when_the_checkpoint_is_kept() -> None:
    """A finished build's checkpoint is deleted once hf/ is exported, so the worker writes the
    last step's (about 16 bytes a parameter) only with keep_final_checkpoint."""
    from pipeline.stages.pretrain.worker import wants_checkpoint

    cfg = _config(max_steps=48, checkpoint_every=12)
    assert [s for s in range(1, 49) if wants_checkpoint(cfg, s)] == [12, 24, 36]
    kept = cfg.model_copy(update={"keep_final_checkpoint": True})
    assert [s for s in range(1, 49) if wants_checkpoint(kept, s)] == [12, 24, 36, 48]
    odd = _config(max_steps=10, warmup_steps=2, eval_every=0, checkpoint_every=4,
                  keep_final_checkpoint=True)
    assert [s for s in range(1, 11) if wants_checkpoint(odd, s)] == [4, 8, 10]
