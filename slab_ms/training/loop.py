"""``train.py``'s loop: a Python loop around one compiled :class:`TrainStep`.

Why a custom loop and not ``Model.train``: an exact mid-epoch resume needs the data of epoch ``e`` to
be the same batches in the same order whichever process reads them, and the loop to skip the batches
already trained on. The loaders are therefore built once per epoch (``create_loaders`` with
epoch ``e``, seeded by seed and epoch), and the loop skips ``step_num × accumulate_steps``
batches of a resumed epoch. Everything else that must be exact (lr index, γ step, optimizer moments,
EMA, BN statistics) is state in Parameters, saved and restored with the checkpoint.

What is not restored: the internal random streams of in-graph random ops (dropout, drop-path) restart
from the seed after a resume, so with ``drop_path_rate > 0`` a resumed run is statistically, not
bitwise, the same as an uninterrupted one.

Safety of the checkpoint folder (lock, cleanup, which checkpoints are good) is ``run_safety.py``'s.
``--resume auto`` skips an unreadable (torn) newest checkpoint with a warning. Under ``ckpt_save_policy top_k``
the ranking comes from the ``val_top1`` each epoch checkpoint holds, so it is rebuilt from the folder after a
resume.

Dataset sinking (``dataset_sink_mode``): the optimizer steps between two host events (a progress line, a
checkpoint, the epoch end) run as one chunk whose inputs come through MindSpore's data channel
(``mindspore.data_sink``, Ascend and GPU) or, on CPU, which MindSpore cannot sink, from the host iterator; the
host reads the loss only at the chunk's end. γ, the lr index and the EMA advance inside the graph, so they are
exact either way. Overflow skipping (``drop_overflow_update``) leaves the data position and the optimizer step
apart by the skipped steps, which the checkpoint records.
"""
import dataclasses
import functools
import math
import os
import time

import numpy as np
import mindspore as ms
from mindspore import ops
from mindcv.loss import create_loss
from mindcv.utils.amp import auto_mixed_precision

from ..cli import check_image_size, set_context, signals_deferred, usable_device
from ..factory import check_model_name, create_model
from ..weights.checkpoint import UnreadableCheckpointError
from ..layers import PRepBNSchedule
from ..weights.train_state import (list_resumable, load_train_checkpoint, prune_checkpoints, read_epoch_losses,
                                   read_val_top1, save_final_checkpoint, save_train_checkpoint)
from .callbacks import GammaDecay, ProgressLogger, format_seconds
from .config import ConfigError
from .evaluate import Evaluator
from .outputs import MetricsLog, run_output_path, save_config
from .recalib import BNRecalibration, average_bn_statistics
from .lr_schedule import build_lr_schedule
from .prepbn_recipe import start_prepbn_schedule
from .run_safety import CheckpointRecord, NonFiniteLossError, RunFolder, non_finite_names
from .train_step import NetWithLoss, TrainStep, build_optimizer

__all__ = ["train", "NonFiniteLossError"]


def _setup_context(options):
    """The context of the run's device (the best available when none is set) and processes: ``(options with that
    device, rank_id, rank_size)``."""
    run = dataclasses.replace(options.run, device_target=usable_device(options.run.device_target))
    options = dataclasses.replace(options, run=run)
    set_context(run)
    if not run.distribute:
        return options, 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    init()
    rank_id, rank_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=rank_size)
    return options, rank_id, rank_size


class Trainer:
    """Builds everything from ``options`` (``TrainOptions``), then :meth:`run`. See the module docstring."""

    def __init__(self, options):
        from ..data import create_loaders  # the data pipeline (MindCV dataset/transforms/loader)
        check_model_name(options.model.model, ConfigError, what="model", any_mindcv_model=True)
        self.model_name, self.ckpt_dir = options.model.model, options.run.ckpt_dir
        self.create_loaders = create_loaders
        options, self.rank_id, self.rank_size = _setup_context(options)
        self.options = options
        self.log = functools.partial(print, flush=True) if self.rank_id == 0 else (lambda *a, **k: None)
        # the only rank that writes: probe, lock, clean the folder before anything else
        self.folder = RunFolder(self.ckpt_dir, self.log) if self.rank_id == 0 else None
        self.record = CheckpointRecord(self.ckpt_dir, self.model_name, writer=self.rank_id == 0)
        try:
            self._build(options, create_loaders)
        except BaseException:
            self.close(failed=True)
            raise

    def _build(self, options, create_loaders):
        ms.set_seed(options.run.seed)  # identical initial weights on every rank

        self.loaders_epoch = 0
        self.train_loader, self.val_loader, num_classes, self.batches_per_epoch = create_loaders(
            options.data, options.run.seed, 0, self.rank_id, self.rank_size)
        if options.model.num_classes is not None and options.model.num_classes != num_classes:
            raise ConfigError(f"num_classes {options.model.num_classes} but the dataset at '{options.data.data_dir}' "
                              f"has {num_classes} classes")
        self.accum = options.optim.accumulate_steps
        self.steps_per_epoch = self.batches_per_epoch // self.accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"one epoch has {self.batches_per_epoch} batches of {options.data.batch_size} per "
                              f"device, fewer than accumulate_steps={self.accum}: lower batch_size or accumulate_steps")
        self.train_epochs = options.optim.epochs + options.optim.cooldown_epochs
        self.total_steps = self.train_epochs * self.steps_per_epoch
        self.images_per_step = options.data.batch_size * self.rank_size * self.accum

        self.net = create_model(self.model_name, num_classes=num_classes, image_size=options.data.image_size,
                                drop_rate=options.model.drop_rate, drop_path_rate=options.model.drop_path_rate,
                                checkpoint_path=options.model.ckpt_file, ema=options.model.ckpt_ema,
                                checkpoint_exclude=options.model.ckpt_exclude, **options.model.model_kwargs)
        check_image_size(self.net, options.data.image_size, ConfigError)  # before any graph is compiled
        # (step, T, warm-up) at optimizer step 0: a new schedule, or the checkpoint's continued (prepbn_schedule)
        self.schedule, schedule_note = start_prepbn_schedule(self.net, options.model, self.total_steps)
        if self.schedule:
            PRepBNSchedule.require(self.net).set(*self.schedule)
        # MindCV's cell-wrapping AMP (MindSpore's own O1 rewrites construct code and loses module globals)
        auto_mixed_precision(self.net, options.optim.amp_level)
        self.lrs = build_lr_schedule(options.optim, self.steps_per_epoch, self.images_per_step)
        self.optimizer = build_optimizer(self.net, options.optim, self.lrs)
        loss_fn = create_loss(options.optim.loss, label_smoothing=options.optim.label_smoothing)
        optim = options.optim
        self.train_step = TrainStep(NetWithLoss(self.net, loss_fn), self.optimizer, self.net,
                                    loss_scale=optim.loss_scale, clip_grad=optim.clip_grad,
                                    accumulate_steps=self.accum, ema_decay=optim.ema_decay if optim.ema else None,
                                    loss_scale_type=optim.loss_scale_type,
                                    drop_overflow_update=optim.drop_overflow_update)
        if options.run.ckpt_save_policy == "top_k" and self.val_loader is None:
            raise ConfigError(f"ckpt_save_policy top_k ranks checkpoints by validation top-1, but "
                              f"'{options.data.data_dir}' has no '{options.data.val_split}' split; use latest_k")
        self.sink = options.optim.dataset_sink_mode
        self.sink_device = self.sink and options.run.device_target in ("Ascend", "GPU")
        self.gamma_decay = GammaDecay(self.net, self.optimizer, self.total_steps, print_fn=self.log,
                                      start_step=self.schedule[0], in_graph=True) if self.schedule else None
        self.progress = ProgressLogger(self.total_steps, self.steps_per_epoch, self.images_per_step,
                                       options.run.log_interval, self.lrs, print_fn=self.log)
        self.evaluator = (Evaluator(self.net, num_classes, options.data.val_batch_size or options.data.batch_size)
                          if self.val_loader is not None else None)
        self.resumed_losses = []  # the losses of the resumed epoch's steps before the checkpoint
        self.epoch_num, self.step_num = self._resume()
        if schedule_note and not self.record.pending:  # a resumed run logs where it resumed instead
            self.log(schedule_note)

    def close(self, failed=False):
        """Release the checkpoint folder (``RunFolder.close``)."""
        if self.folder is not None:
            self.folder.close(failed)

    # ------------------------------------------------------------------ resume
    def _resume(self):
        path = self.options.run.resume
        if path == "auto":
            return self._resume_auto()
        if not path and (list_resumable(self.ckpt_dir, self.model_name) or os.path.exists(self.final_path)):
            raise ConfigError(f"'{self.ckpt_dir}' already holds checkpoints of {self.model_name}; pass --resume auto "
                              "to continue that run, or choose another --ckpt_dir (nothing is overwritten)")
        if not path:
            return 0, 0
        return self._resume_from(path)

    def _resume_auto(self):
        """The newest readable checkpoint of this model in ckpt_dir; unreadable (torn) newer ones are skipped."""
        for _, _, path in reversed(list_resumable(self.ckpt_dir, self.model_name)):
            try:
                return self._resume_from(path)
            except UnreadableCheckpointError as err:
                self.log(f"resume auto: warning: skipping '{path}': {err}")
        self.log(f"resume auto: no readable checkpoint of {self.model_name} in '{self.ckpt_dir}', starting a new run")
        return 0, 0

    def _resume_from(self, path):
        options = self.options
        epoch_num, step_num = load_train_checkpoint(path, self.net, self.optimizer, self.train_step)
        global_step = int(self.optimizer.global_step.asnumpy().reshape(()))
        skipped = self.train_step.loss_scale_state()[1]
        expected = min(epoch_num * self.steps_per_epoch + step_num, self.total_steps)
        if global_step + skipped != expected or epoch_num > self.train_epochs + options.optim.bn_recalib_epochs:
            taken = f"{global_step} optimizer steps taken" + (f" and {skipped} skipped on overflow" if skipped else "")
            raise ConfigError(f"'{path}' is at epoch {epoch_num} step {step_num} with {taken}, which does not fit "
                              f"this run ({self.steps_per_epoch} optimizer steps per epoch, {self.train_epochs} "
                              f"epochs + {options.optim.bn_recalib_epochs} BN re-calibration epochs): "
                              "resume with the recipe, batch size, device count, accumulate_steps and data it was "
                              "written with")
        if self.schedule:  # γ step - global_step is the step the resumed run started from
            s = PRepBNSchedule.require(self.net).state()
            start, decay, warmup = self.schedule
            if (s["decay_steps"], s["warmup_steps"], s["step"]) != (decay, warmup, start + global_step):
                raise ConfigError(f"'{path}' holds the γ schedule T={s['decay_steps']}, warm-up {s['warmup_steps']}, "
                                  f"step {s['step']} after {global_step} optimizer steps; this run computes T={decay}, "
                                  f"warm-up {warmup}, step {start + global_step}: resume with the same recipe "
                                  "(and the --ckpt_file / prepbn_schedule the run started with)")
        self.record.written(path)
        self.resumed_losses = read_epoch_losses(path) if step_num else []
        scale = ""
        if self.train_step.skip_overflow:
            scale = f", loss scale {self.train_step.loss_scale_state()[0]:g} ({skipped} steps skipped on overflow)"
        self.log(f"resumed from '{path}': epoch {epoch_num}, step {step_num} of the epoch, optimizer step "
                 f"{global_step}, lr {self.lrs[min(global_step, self.total_steps - 1)]:.3e}{scale}")
        return epoch_num, step_num

    @property
    def final_path(self):
        return os.path.join(self.ckpt_dir, f"{self.model_name}.ckpt")

    def _output_path(self, what):
        return run_output_path(self.ckpt_dir, self.model_name, what)

    def _start_outputs(self):
        """Rank 0: the resolved options, the metrics table cut back to the epochs already done, the top-k ranking
        of the checkpoints in the folder."""
        self.metrics = self.top1 = None
        if self.rank_id != 0:
            return
        save_config(self._output_path("config.yaml"), self.options)
        self.metrics = MetricsLog(self._output_path("metrics.csv"))
        self.metrics.restart(min(self.epoch_num, self.train_epochs))
        self.top1 = {}
        if self.options.run.ckpt_save_policy == "top_k":
            for _, _, path in list_resumable(self.ckpt_dir, self.model_name):
                self.top1[path] = read_val_top1(path)

    # ------------------------------------------------------------------ data
    def _loaders(self, epoch, no_mix=False):
        if epoch == self.loaders_epoch and not no_mix:
            return self.train_loader, self.val_loader
        train_loader, val_loader, _, batches = self.create_loaders(self.options.data, self.options.run.seed, epoch,
                                                                   self.rank_id, self.rank_size, mix=not no_mix)
        if batches != self.batches_per_epoch:
            raise RuntimeError(f"epoch {epoch} has {batches} batches, epoch 0 had {self.batches_per_epoch}")
        if not no_mix:
            self.train_loader, self.val_loader, self.loaders_epoch = train_loader, val_loader, epoch
        return train_loader, val_loader

    def _batches(self, loader, skip, count):
        iterator = loader.create_tuple_iterator(num_epochs=1)
        try:
            for index, batch in enumerate(iterator):
                if index >= count:
                    break
                if index >= skip:
                    yield batch
        finally:
            iterator.stop()

    # ------------------------------------------------------------------ phases
    def _check_finite(self, where):
        """Refuse to save (or go on from) parameters holding NaN / inf."""
        bad = non_finite_names(list(self.net.get_parameters()) + self.train_step.ema_parameters())
        if bad:
            self._stop(f"non-finite parameters {where} ({len(bad)}, e.g. {bad[0]}): training stopped, not saved")

    def _stop(self, reason, advice="Lower lr, set clip_grad, or (with amp_level O2/O3) lower loss_scale."):
        self.record.stop(reason, advice)

    def _save(self, epoch_num, step_num, val_top1=None, epoch_losses=()):
        if self.rank_id != 0:
            return
        self._check_finite(f"after optimizer step {self.optimizer_step()}")
        with signals_deferred():  # a Ctrl-C while saving stops the run after the checkpoint is whole
            path = save_train_checkpoint(self.ckpt_dir, self.model_name, self.net, self.optimizer, self.train_step,
                                         epoch_num, step_num, val_top1=val_top1, epoch_losses=epoch_losses)
            self.top1[path] = val_top1
            self._prune()
        self.record.written(path)
        self.log(f"saved checkpoint {path}")

    def _prune(self):
        """Apply ckpt_save_policy; the last good checkpoint stays until a newer one is shown to be good."""
        options = self.options
        for deleted in prune_checkpoints(self.ckpt_dir, self.model_name, options.run.keep_checkpoint_max,
                                         protect=self.record.protected(),
                                         policy=options.run.ckpt_save_policy, top1=self.top1):
            self.top1.pop(deleted, None)

    def optimizer_step(self):
        return int(self.optimizer.global_step.asnumpy().reshape(()))

    def _non_finite(self, what, value, epoch, global_step):
        self._stop(f"non-finite {what} ({value}) in epoch {epoch + 1} at optimizer step {global_step + 1}: training "
                   "stopped, nothing saved after it")

    def _step_function(self, loader, skip, count):
        """``(step(), close())``: ``step()`` runs one micro-batch of the epoch (after ``skip``), fed through
        MindSpore's data channel when sinking on Ascend/GPU, else from the host iterator."""
        if self.sink_device:
            sink = ms.data_sink(self.train_step, loader.skip(skip) if skip else loader, sink_size=1)
            return sink, lambda: None
        batches = self._batches(loader, skip, count)

        def step():
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(f"the loader yielded fewer than the {self.batches_per_epoch} batches it announced")
            return self.train_step(*batch)
        return step, batches.close

    def _chunk(self, global_step, step_in_epoch):
        """Optimizer steps until the next host event: 1 without sinking, else up to the next progress line,
        ``ckpt_interval`` checkpoint or the epoch end."""
        left = self.steps_per_epoch - step_in_epoch
        if not self.sink:
            return 1
        events = [left, self.options.run.log_interval - global_step % self.options.run.log_interval]
        if self.options.run.ckpt_interval:
            events.append(self.options.run.ckpt_interval - global_step % self.options.run.ckpt_interval)
        return max(min(events), 1)

    def _run_chunk(self, step, steps, epoch, global_step):
        """``steps`` optimizer steps; returns (the losses read, the last grad_norm, steps skipped on overflow).
        A non-finite value stops training unless it is a skipped overflow step."""
        skip_mode = self.train_step.skip_overflow
        scale, skipped_before = self.train_step.loss_scale_state() if skip_mode else (None, 0)
        micro = steps * self.accum
        losses = []
        for index in range(micro):
            loss, grad_norm = step()
            if self.sink and index < micro - 1:
                continue  # a sink: the host reads its last step only
            loss = float(loss.asnumpy())
            if not math.isfinite(loss) and not skip_mode:
                self._non_finite("loss", loss, epoch, global_step + index // self.accum)
            losses.append(loss)
        grad_norm = float(grad_norm.asnumpy())
        skipped = self.train_step.loss_scale_state()[1] - skipped_before if skip_mode else 0
        finite_losses = all(map(math.isfinite, losses))
        if not (finite_losses and math.isfinite(grad_norm)) and not skipped:
            bad_loss = [v for v in losses if not math.isfinite(v)]
            self._non_finite("loss" if bad_loss else "gradient norm", bad_loss[0] if bad_loss else grad_norm,
                             epoch, global_step + steps - 1)
        if finite_losses:  # also when an overflow in the scaled gradients skipped the step
            self.record.confirm()
        if skipped:
            where = (f"optimizer step {global_step + 1}" if steps == 1
                     else f"steps {global_step + 1}-{global_step + steps}")
            self.log(f"epoch {epoch + 1} {where}: gradient overflow at loss scale {scale:g}, {skipped} optimizer "
                     f"step{'s' if skipped > 1 else ''} skipped (optimizer, lr, γ and EMA did not advance); loss scale "
                     f"now {self.train_step.loss_scale_state()[0]:g}")
        return [v for v in losses if math.isfinite(v)], grad_norm, skipped

    def train_loop(self):
        options = self.options
        self.train_step.set_train(True)
        global_step = min(self.epoch_num * self.steps_per_epoch + self.step_num, self.total_steps)
        if self.gamma_decay and self.epoch_num < self.train_epochs:
            self.gamma_decay.on_train_begin()
        if self.sink and self.epoch_num < self.train_epochs:
            how = ("through MindSpore's data channel" if self.sink_device else
                   f"fed from the host (MindSpore cannot sink on {options.run.device_target}): one host read per chunk")
            self.log(f"dataset_sink_mode: the optimizer steps between progress lines, checkpoints and epoch ends run "
                     f"as one sink, {how}")
        for epoch in range(self.epoch_num, self.train_epochs):
            skip = self.step_num * self.accum if epoch == self.epoch_num else 0
            step_in_epoch = skip // self.accum
            train_loader, _ = self._loaders(epoch)
            epoch_losses = list(self.resumed_losses) if skip else []  # the whole epoch's, across a resume
            epoch_skipped, first = 0, step_in_epoch
            epoch_start = time.time()
            step, close = self._step_function(train_loader, skip, self.steps_per_epoch * self.accum)
            try:
                while step_in_epoch < self.steps_per_epoch:
                    steps = self._chunk(global_step, step_in_epoch)
                    losses, grad_norm, skipped = self._run_chunk(step, steps, epoch, global_step)
                    epoch_losses += losses
                    epoch_skipped += skipped
                    global_step += steps
                    step_in_epoch += steps
                    gamma = self.gamma_decay.on_train_step_end() if self.gamma_decay else None
                    self.progress.step_end(global_step, float(np.mean(losses)) if losses else math.nan, grad_norm,
                                           gamma, lr=self._lr())
                    if options.run.ckpt_interval and global_step % options.run.ckpt_interval == 0 \
                            and step_in_epoch < self.steps_per_epoch:
                        self._save(epoch, step_in_epoch, epoch_losses=epoch_losses)
            finally:
                close()
            train_time = time.time() - epoch_start
            if epoch_skipped and epoch_skipped == step_in_epoch - first:
                self._stop(f"every optimizer step of epoch {epoch + 1} ({epoch_skipped}) overflowed and was skipped: "
                           "training stopped", "Lower lr or amp_level")
            self.log(f"epoch {epoch + 1}/{self.train_epochs} done in {format_seconds(train_time)}")
            self._end_epoch(epoch + 1, float(np.mean(epoch_losses)) if epoch_losses else math.nan,
                            (step_in_epoch - first) * self.images_per_step / max(train_time, 1e-9))
        if self.gamma_decay and self.epoch_num <= self.train_epochs:
            self.gamma_decay.on_train_end()

    def _lr(self):
        """The lr of the optimizer step just taken."""
        return self.lrs[min(max(self.optimizer_step() - 1, 0), self.total_steps - 1)]

    def _end_epoch(self, epoch_num, loss, img_per_s):
        """Validation (val_interval), the metrics row, the epoch checkpoint (ckpt_save_interval, last epoch)."""
        options = self.options
        top1 = top5 = None
        if options.run.val_while_train and self.evaluator and epoch_num % options.run.val_interval == 0:
            top1, top5 = self.validate()
            self.log(f"epoch {epoch_num}: validation top-1 {top1:.2%}, top-{self.evaluator.k} {top5:.2%}")
            self.train_step.set_train(True)
        if self.metrics is not None:
            gamma = PRepBNSchedule.require(self.net).gamma_value() if self.schedule else None
            self.metrics.append(epoch_num, loss, top1, top5, gamma, self._lr(), img_per_s)
        if epoch_num % options.run.ckpt_save_interval == 0 or epoch_num == self.train_epochs:
            self._save(epoch_num, 0, val_top1=top1)

    def recalibrate_bn(self):
        """``bn_recalib_epochs`` passes re-estimating BN statistics with frozen weights."""
        first = max(self.epoch_num - self.train_epochs, 0)
        if first >= self.options.optim.bn_recalib_epochs:
            return
        recalib = BNRecalibration(self.net)
        for index in range(first, self.options.optim.bn_recalib_epochs):
            start = time.time()
            epoch = self.train_epochs + index
            train_loader, _ = self._loaders(epoch, no_mix=True)
            recalib.prepare()
            for images, _ in self._batches(train_loader, 0, self.batches_per_epoch):
                recalib(images)
            if self.rank_size > 1:
                average_bn_statistics(self.net)
            self.log(f"BN re-calibration epoch {index + 1}/{self.options.optim.bn_recalib_epochs} done in "
                     f"{format_seconds(time.time() - start)} (weights frozen, BN statistics re-estimated)")
            self._save(epoch + 1, 0)

    def validate(self):
        """``(top-1, top-5)`` on the val split (top-5: top-k with k = min(5, classes))."""
        totals = self.evaluator.totals(self.val_loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
        if self.rank_size > 1:
            totals = ops.AllReduce()(ms.Tensor(totals.astype(np.float32))).asnumpy().astype(np.float64)
        accuracy = Evaluator.accuracy(totals)
        return accuracy.top1, accuracy.topk

    def run(self):
        start = time.time()
        self.log(f"training {self.model_name}: {self.train_epochs} epochs × {self.steps_per_epoch} optimizer steps "
                 f"({self.accum} × {self.options.data.batch_size} images per device × {self.rank_size} devices per "
                 "step), "
                 f"then {self.options.optim.bn_recalib_epochs} BN re-calibration epochs")
        self._start_outputs()
        self.train_loop()
        self.recalibrate_bn()
        self.record.confirm()  # the run ended: nothing showed the newest checkpoint's weights to be bad
        if self.rank_id == 0:
            self._prune()
        result = {"checkpoint": self.record.last_good, "top1": None, "top5": None}
        if self.evaluator:
            result["top1"], result["top5"] = self.validate()
            self.log(f"final validation top-1: {result['top1']:.2%}, top-{self.evaluator.k}: {result['top5']:.2%}")
        if self.rank_id == 0:
            self._check_finite("at the end of training")
            with signals_deferred():
                epochs = self.train_epochs + self.options.optim.bn_recalib_epochs
                result["final_checkpoint"] = save_final_checkpoint(self.final_path, self.net, self.train_step, epochs)
            self.log(f"saved final weights {result['final_checkpoint']}")
        if self.rank_size > 1:
            self.check_ranks_agree()
        self.log(f"done in {format_seconds(time.time() - start)}")
        return result

    def check_ranks_agree(self):
        """Data-parallel ranks must end with the same parameters: compare per-parameter checksums with their
        mean over the ranks (AllReduce on CPU only sums)."""
        all_reduce = ops.AllReduce()
        sums = np.array([np.abs(p.asnumpy().astype(np.float64)).sum() for p in self.net.get_parameters()], np.float32)
        mean = all_reduce(ms.Tensor(sums)).asnumpy() / self.rank_size
        local = np.max(np.abs(sums - mean) / np.maximum(np.abs(mean), 1.0))
        spread = float(all_reduce(ms.Tensor(np.array([local], np.float32))).asnumpy()[0])
        if spread > 1e-6:
            raise RuntimeError(f"data-parallel ranks diverged: parameter checksums differ (relative {spread:.3g})")
        self.log(f"data-parallel check: the {len(sums)} parameters agree on all {self.rank_size} ranks (checksum "
                 f"spread {spread:.1g}, relative)")


def train(options):
    """Train as ``options`` (``TrainOptions``, from :func:`slab_ms.training.config.parse_options`) say; returns a
    summary dict."""
    trainer = Trainer(options)
    try:
        return trainer.run()
    finally:
        trainer.close()
