"""``actrec train --help``: the short help, printed without importing torch or Lightning.

:mod:`actrec.cli` prints it before importing :mod:`actrec.trainer.cli`, which imports Lightning (seconds on 2
cores); ``--help-all`` goes through LightningCLI and lists every option.
"""

from __future__ import annotations

from actrec.configs import config_names

__all__ = ["short_help"]


def short_help() -> str:
    """``actrec train --help``: actrec's own options first; ``--help-all`` gives LightningCLI's full list."""
    names = ", ".join(config_names())
    return f"""usage: actrec train [--config NAME|FILE] [--experiment NAME] [--runs_dir DIR] [--ckpt_path FILE]
                    [--record true|false] [--<group>.<argument> VALUE ...]

Train a network from the actrec model zoo, recording every conv layer's activations at every recorded step,
then test the final weights. The run goes to <runs_dir>/<experiment>/version_N/.

actrec options:
  --config NAME|FILE        a shipped config by name ({names}) or a YAML file
  --experiment NAME         runs go to <runs_dir>/<experiment>/version_N/ (default: quickstart)
  --runs_dir DIR            root folder of all runs (default: runs)
  --ckpt_path FILE          resume from a Lightning checkpoint; its run's activation store continues
  --seed_everything N       same config and seed give the same metrics (default: 0)
  --record true|false       record activations with the recorder options below (default: true)
  --print_config            print the resolved config as YAML and exit (a file for --config)

model (--model.*):
  --model.model NAME        six_conv_tanh (default), lenet or mlp
  --model.init NAME         default (PyTorch's) or article (normal(0, 0.01))
  --model.lr LR             Adam's learning rate (default: 0.002)

data (--data.*):
  --data.dataset NAME       mnist-sample (default, offline), mnist or fashion-mnist
  --data.batch_size N       (default: 64)
  --data.data_dir DIR       where mnist and fashion-mnist are found or downloaded (default: data)
  --data.download BOOL      allow downloading them (default: false; true in article and fashion)

recorder (--recorder.*):
  --recorder.layers LIST    module names or globs, e.g. '[net.conv1, net.conv5]' (default: every conv block)
  --recorder.every_n_steps N          record every N optimizer steps, step 0 always (default: 5)
  --recorder.probes_per_class N       probe images per class from the validation split (default: 1)
  --recorder.probe_indices LIST       explicit validation-split indices instead
  --recorder.dtype float16|float32    (default: float16)
  --recorder.compression none|lzf|gzip  (default: none)
  --recorder.path FILE      where the store goes (default: <run>/activations.h5)
  --recorder.overwrite BOOL replace an existing store at path (default: false)

trainer (--trainer.*): every pl.Trainer argument, e.g.
  --trainer.max_epochs N    (default: 30)
  --trainer.max_steps N     stop after N optimizer steps
  --trainer.accelerator cpu|gpu|auto

  --help-all                all options, Lightning's included (500+ lines)
  -h, --help                this message

At the end actrec train prints the run folder and the commands to render it, view it in TensorBoard and
report it; `actrec runs` lists every run."""
