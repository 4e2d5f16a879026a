"""Training-loop callbacks: the γ-decay owner and the progress lines.

``GammaDecay`` follows MindSpore's ``Callback`` method names (``on_train_begin``,
``on_train_step_end``, ``on_train_end``) and reads only the objects it was built with, so it also works
under ``mindspore.train.Model.train``; ``train.py``'s loop calls it once per optimizer step.
"""
import functools
import math
import time

from mindspore.train import Callback

from ..layers import get_prepbn_schedule, prepbn_gamma

__all__ = ["GammaDecay", "ProgressLogger", "format_seconds"]


def format_seconds(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class GammaDecay(Callback):
    """Owns the PRepBN γ schedule from the training loop's side.

    The schedule itself advances inside the compiled train step (one ``prepbn_step`` per optimizer
    step). This callback checks that it does: after every optimizer step ``prepbn_step`` must equal
    ``start_step`` + the optimizer's ``global_step`` (the lr index), and at the end of training γ must be
    exactly 0, i.e. the model trained into the pure-RepBN form it is evaluated in.

    Args:
        net: model owning ``prepbn_step`` / ``prepbn_decay_steps`` / ``prepbn_warmup_steps``.
        optimizer: the optimizer whose ``global_step`` counts optimizer steps.
        total_steps: optimizer steps of the whole run.
        log_interval: print γ every this many optimizer steps (0: never; train.py prints γ in its
            progress line instead).
        start_step: ``prepbn_step`` when the run's optimizer step was 0: 0 for a new schedule, the loaded
            step when fine-tuning continues a checkpoint's schedule. Only the decay left after it has
            to fit into the run.
    """

    def __init__(self, net, optimizer, total_steps, log_interval=0, print_fn=functools.partial(print, flush=True),
                 start_step=0):
        super().__init__()
        self.net = net
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.log_interval = log_interval
        self.print_fn = print_fn
        self.start_step = start_step
        self.gamma = None

    def schedule(self):
        return get_prepbn_schedule(self.net)

    def _checked_schedule(self):
        s = self.schedule()
        global_step = int(self.optimizer.global_step.asnumpy().reshape(()))
        if s["step"] != self.start_step + global_step:
            raise RuntimeError(f"γ schedule out of step: prepbn_step={s['step']} but the optimizer took "
                               f"{global_step} steps from prepbn_step {self.start_step}")
        self.gamma = prepbn_gamma(s["step"], s["decay_steps"], s["warmup_steps"])
        return s, global_step

    def on_train_begin(self, run_context=None):
        s, global_step = self._checked_schedule()
        end = s["warmup_steps"] + s["decay_steps"]
        if end - self.start_step > self.total_steps:
            raise ValueError(f"γ schedule (T={s['decay_steps']}, warm-up {s['warmup_steps']}, from step "
                             f"{self.start_step}) is longer than the run ({self.total_steps} optimizer steps)")
        if end <= self.start_step:
            self.print_fn(f"γ schedule: finished before this run (step {self.start_step} ≥ warm-up "
                          f"{s['warmup_steps']} + T {s['decay_steps']}): γ = 0 for all {self.total_steps} optimizer "
                          f"steps; now step {s['step']}")
            return
        zero_at = f"step {end} of {self.total_steps}"
        if self.start_step:
            zero_at = (f"step {end} = optimizer step {end - self.start_step} of {self.total_steps}, started at step "
                       f"{self.start_step}")
        self.print_fn(f"γ schedule: LayerNorm only for {s['warmup_steps']} optimizer steps, then linear decay to 0 "
                      f"over T={s['decay_steps']} steps (γ = 0 from {zero_at}); now step {s['step']}, "
                      f"γ={self.gamma:.4f}")

    def on_train_step_end(self, run_context=None):
        s, _ = self._checked_schedule()
        if self.log_interval and s["step"] % self.log_interval == 0:
            self.print_fn(f"step {s['step']}: γ={self.gamma:.6f}")
        return self.gamma

    def on_train_end(self, run_context=None):
        s = self.schedule()
        self.gamma = prepbn_gamma(s["step"], s["decay_steps"], s["warmup_steps"])
        if s["step"] != self.start_step + self.total_steps or self.gamma != 0.0:
            raise RuntimeError(f"training ended at prepbn_step {s['step']} (expected {self.start_step} + "
                               f"{self.total_steps}) with γ={self.gamma} (expected γ = 0)")
        self.print_fn(f"γ schedule finished: step {s['step']}, γ = 0 (the model is pure RepBN now)")


class ProgressLogger:
    """``epoch e/E step s/S (global g/G) loss γ lr grad_norm img/s ETA`` every ``log_interval`` steps.

    img/s and ETA leave out the first optimizer step of a process (graph compilation).
    """

    def __init__(self, total_steps, steps_per_epoch, images_per_step, log_interval, lrs,
                 print_fn=functools.partial(print, flush=True)):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.images_per_step = images_per_step
        self.log_interval = log_interval
        self.lrs = lrs
        self.print_fn = print_fn
        self.first_step_done = None
        self.last_time = None
        self.last_step = None

    def step_end(self, global_step, loss, grad_norm, gamma=None):
        now = time.time()
        if self.first_step_done is None:
            self.first_step_done = (now, global_step)
            self.last_time, self.last_step = now, global_step
        if global_step % self.log_interval and global_step != self.total_steps:
            return
        done_time, done_step = self.first_step_done
        steps = global_step - self.last_step
        rate = self.images_per_step * steps / (now - self.last_time) if steps and now > self.last_time else math.nan
        per_step = (now - done_time) / (global_step - done_step) if global_step > done_step else math.nan
        eta = format_seconds(per_step * (self.total_steps - global_step)) if per_step == per_step else "?"
        epoch, step = divmod(global_step - 1, self.steps_per_epoch)
        gamma_text = f" γ {gamma:.4f}" if gamma is not None else ""
        self.print_fn(f"epoch {epoch + 1} step {step + 1}/{self.steps_per_epoch} (global {global_step}/"
                      f"{self.total_steps}) loss {loss:.4f}{gamma_text} lr {self.lrs[global_step - 1]:.3e} "
                      f"grad_norm {grad_norm:.3f} img/s {rate:.1f} ETA {eta}")
        self.last_time, self.last_step = now, global_step
