"""Training-loop callbacks: the γ-decay owner and the progress lines.

``GammaDecay`` is a MindSpore ``Callback`` (``on_train_begin``, ``on_train_step_end``, ``on_train_end``):
``Model.train`` and MindCV's trainer call it, and ``train.py``'s loop calls it once per optimizer step.
"""
import functools
import math
import time

from mindspore.train import Callback

from ..layers import PRepBNSchedule

__all__ = ["GammaDecay", "ProgressLogger", "format_seconds"]


def format_seconds(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _counts_steps(optimizer):
    """Whether ``optimizer.global_step`` counts optimizer steps: MindCV's AdamW-type optimizers advance it only with
    a dynamic lr or weight decay (MindSpore's always do)."""
    dynamic = getattr(optimizer, "_is_dynamic_lr_or_weight_decay", None)
    return dynamic is None or bool(dynamic())


class GammaDecay(Callback):
    """Owns a PRepBN model's γ schedule from the training loop's side: one γ step per optimizer step.

    Works wherever the model trains: under ``mindspore.train.Model.train`` (sink and non-sink), MindCV's
    trainer, or a loop that calls ``on_train_step_end()`` after each optimizer step. There it advances the
    schedule on the host to ``start_step`` + the optimizer steps taken, read from ``optimizer.global_step``
    when given (exact under accumulation, resume and sinking), else from MindSpore's ``cur_step_num`` or its
    own call count, divided by ``accumulate_steps``. In sink mode one call covers ``sink_size`` steps, so γ
    then changes once per sink. Under this package's ``TrainStep``, which advances the step inside the
    compiled graph, it only checks that the two agree and never counts twice (``in_graph``; detected
    from ``run_context``, or passed). Either way it refuses a schedule longer than the run at the start
    and checks γ = 0 at the end: the model trained into the pure-RepBN form it is evaluated in.

    Args:
        net: model owning a :class:`~slab_ms.layers.PRepBNSchedule`.
        optimizer: the optimizer whose ``global_step`` counts optimizer steps, or None (an optimizer that does not
            count them, such as MindCV's AdamW with a constant lr, is not read).
        total_steps: optimizer steps of the whole run.
        log_interval: print γ every this many optimizer steps (0: never).
        start_step: the γ step when the run's optimizer step was 0 (default: 0 in_graph, else read at
            ``on_train_begin``: the schedule's step minus the optimizer steps already taken).
        accumulate_steps: micro-batches per optimizer step, when the steps are counted from calls.
        in_graph: True when the train step advances the schedule itself (check only), False to advance it
            here, None to detect it from ``run_context`` (a standard train cell: advance).
    """

    def __init__(self, net, optimizer=None, total_steps=None, log_interval=0,
                 print_fn=functools.partial(print, flush=True), start_step=None, accumulate_steps=1, in_graph=None):
        super().__init__()
        if total_steps is None or int(total_steps) < 1:
            raise ValueError(f"GammaDecay needs the run's total_steps (optimizer steps, >= 1), got {total_steps}")
        self.net = net
        self.optimizer = optimizer if optimizer is not None and _counts_steps(optimizer) else None
        self.total_steps = int(total_steps)
        self.log_interval = log_interval
        self.print_fn = print_fn
        self.start_step = start_step
        self.accumulate_steps = int(accumulate_steps)
        self.in_graph = in_graph
        self.calls = 0
        self.gamma = None
        self.prepbn = PRepBNSchedule.require(net)
        self.prepbn.claim()  # one γ step per optimizer step from here, not one per training forward

    def schedule(self):
        return self.prepbn.state()

    def _optimizer_steps(self, run_context):
        if self.optimizer is not None:
            return int(self.optimizer.global_step.asnumpy().reshape(()))
        cb_params = run_context.original_args() if run_context is not None else None
        micro = getattr(cb_params, "cur_step_num", None) if cb_params is not None else None
        return (self.calls if micro is None else int(micro)) // self.accumulate_steps

    def _detect_in_graph(self, run_context):
        if self.in_graph is None:
            cb_params = run_context.original_args() if run_context is not None else None
            network = getattr(cb_params, "train_network", None)
            self.in_graph = bool(getattr(network, "has_schedule", False))

    def _sync(self, run_context):
        """Bring (host mode) or check (in-graph mode) the γ step to ``start_step`` + optimizer steps."""
        steps = self._optimizer_steps(run_context)
        target, now = self.start_step + steps, self.schedule()["step"]
        if now != target:
            if self.in_graph or now > target:
                raise RuntimeError(f"γ schedule out of step: γ step {now} but the optimizer took {steps} steps "
                                   f"from γ step {self.start_step}")
            self.prepbn.advance(target - now)
        self.gamma = self.prepbn.gamma_value()
        return self.schedule()

    def on_train_begin(self, run_context=None):
        self._detect_in_graph(run_context)
        if self.start_step is None:  # a train step that advances γ itself started it at 0 with the optimizer
            self.start_step = 0 if self.in_graph else self.schedule()["step"] - self._optimizer_steps(run_context)
        s = self._sync(run_context)
        try:
            self.prepbn.check_fits(self.total_steps, start_step=self.start_step)
        except ValueError as err:
            room = self.start_step + self.total_steps - s["warmup_steps"]  # the most decay steps that fit
            bound = (f"decay_steps=N) with N <= {room}" if room > 0 else
                     f"warmup_steps=W, decay_steps=N) with W + N <= {self.start_step + self.total_steps}")
            raise ValueError(f"{err} Fit the schedule to this run: build the model with create_model(..., "
                             f"prepbn_decay_steps=N), or set it on the built model with PRepBNSchedule.of(net).set("
                             f"{bound}.") from None
        end = self.prepbn.end_step()
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
        """Returns γ after this step."""
        if self.start_step is None:
            self.on_train_begin(run_context)
        self.calls += 1
        s = self._sync(run_context)
        if self.log_interval and s["step"] % self.log_interval == 0:
            self.print_fn(f"step {s['step']}: γ={self.gamma:.6f}")
        return self.gamma

    def on_train_end(self, run_context=None):
        """Check γ = 0 at step ``start_step`` + the optimizer steps taken. Steps skipped on a loss-scale overflow
        advance neither the optimizer nor γ; if they leave γ > 0, this warns (with the count) instead."""
        steps = self.total_steps
        if self.optimizer is not None:
            steps = min(self._optimizer_steps(run_context), self.total_steps)
        s = self.schedule()
        if steps < self.total_steps and self.prepbn.gamma_value() > 0.0:
            self.gamma = self.prepbn.gamma_value()
            self.print_fn(f"γ schedule: warning: {self.total_steps - steps} of the run's {self.total_steps} optimizer "
                          f"steps were skipped (loss-scale overflow), so γ = {self.gamma:.4f} at step {s['step']}, "
                          f"not 0; train on with --ckpt_file and prepbn_schedule continue, or leave room "
                          f"(prepbn_decay_ratio < 1)")
            return
        self.prepbn.verify_finished(expected_step=self.start_step + steps)
        self.gamma = 0.0
        self.print_fn(f"γ schedule finished: step {s['step']}, γ = 0 (the model is pure RepBN now)")


class ProgressLogger:
    """``epoch e/E step s/S (global g/G) loss γ lr grad_norm img/s ETA`` every ``log_interval`` steps
    (``step g/G ...`` without ``steps_per_epoch``; ``unit``/s instead of img/s, e.g. tokens).

    img/s and ETA leave out the first optimizer step of a process (graph compilation).
    """

    def __init__(self, total_steps, steps_per_epoch, images_per_step, log_interval, lrs,
                 print_fn=functools.partial(print, flush=True), unit="img"):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.images_per_step = images_per_step
        self.log_interval = log_interval
        self.lrs = lrs
        self.print_fn = print_fn
        self.unit = unit
        self.first_step_done = None
        self.last_time = None
        self.last_step = None

    def step_end(self, global_step, loss, grad_norm, gamma=None, lr=None):
        """``lr``: the lr of the step (default ``lrs[global_step - 1]``; it differs after steps skipped on overflow)."""
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
        progress = f"{global_step}/{self.total_steps}"
        where = f"step {progress}"
        if self.steps_per_epoch:
            epoch, step = divmod(global_step - 1, self.steps_per_epoch)
            where = f"epoch {epoch + 1} step {step + 1}/{self.steps_per_epoch} (global {progress})"
        gamma_text = f" γ {gamma:.4f}" if gamma is not None else ""
        lr = self.lrs[global_step - 1] if lr is None else lr
        self.print_fn(f"{where} loss {loss:.4f}{gamma_text} lr {lr:.3e} grad_norm {grad_norm:.3f} "
                      f"{self.unit}/s {rate:.1f} ETA {eta}")
        self.last_time, self.last_step = now, global_step
