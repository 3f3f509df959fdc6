"""Training on several devices or machines with tf.distribute: the strategy, the sharded data, the compiled step.

    --strategy default       one device (TensorFlow's default strategy)
    --strategy mirrored      every local GPU (with none, every logical CPU device): MirroredStrategy
    --strategy multiworker   one process per machine, the cluster from TF_CONFIG: MultiWorkerMirroredStrategy
                             (docs/distributed.md)

Why an R-replica run is the 1-replica run, up to the order of floating-point sums:
    1. train.batch_size is the global batch; replica r trains on the r-th contiguous 1/R of every global batch
       (`make_dataset(shard=...)`), so the union over the replicas is the 1-replica batch, element for element;
    2. each example's t and eps are stateless draws from its own key, which travels with it
       (`make_dataset(example_seeds=True)`, `CVDM.draw_noise`), not from a per-replica random stream;
    3. each replica differentiates its mean loss / R and the gradients are summed over the replicas before
       global-norm clipping (`CVDM.replica_train_step`); the logged values are means over the replicas (equal
       batches: the means over the global batch).
Only the chief (worker 0) writes the run folder; the other workers save their checkpoints (TensorFlow's saving
may need every worker) to a temporary folder that they delete.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from cvdm_tf.errors import InputError

STRATEGIES = ("default", "mirrored", "multiworker")
# Seconds between TensorFlow's health checks of the other workers: a dead worker fails the run within about this.
WORKER_TIMEOUT = 60.0


def make_strategy(name: str, worker_timeout: float = WORKER_TIMEOUT) -> tf.distribute.Strategy:
    """The tf.distribute strategy `name` (one of STRATEGIES).

    Args:
        name: str. "default", "mirrored" or "multiworker" (cluster from the TF_CONFIG environment variable).
        worker_timeout: float. Multiworker: a worker that died (its process or machine) fails the run within
            about this many seconds (a machine gone silent: ~30 s more). (Not a timeout on each collective: a live worker may wait as long as the
            chief needs for what it alone does, e.g. the previews.)

    Returns:
        tf.distribute.Strategy.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name != "multiworker":
        raise InputError(f"--strategy: {name!r} is not one of {', '.join(STRATEGIES)}")
    _check_tf_config()
    # TensorFlow's own health checks (collective_all_reduce_strategy.py): every `interval` seconds each worker
    # pings the others; one that fails `retry_limit` pings of `timeout` seconds aborts the pending collectives
    # with UnavailableError. The first check waits for the whole cluster to start, however long that takes.
    from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

    # A dead process refuses the ping at once; a busy one must not be taken for dead, so the ping keeps TF's
    # 10 s (x 3 tries): a machine that vanished without a word takes ~30 s more to be noticed.
    CollectiveAllReduceExtended._check_health_interval = worker_timeout
    return tf.distribute.MultiWorkerMirroredStrategy()


def finish(strategy: tf.distribute.Strategy):
    """The end of a multiworker run: wait until every worker is done (the chief writes the last preview), then
    stop the health checks, so that a worker that exits first is not reported as lost."""
    if not is_multiworker(strategy):
        return
    barrier = tf.function(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM,
                                                  strategy.run(lambda: tf.constant(1.0)), axis=None))
    barrier()
    getattr(strategy.extended, "_stop_check_health_thread", lambda: None)()


def _check_tf_config():
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise InputError("--strategy multiworker: TF_CONFIG is not set (each worker needs the cluster and its own "
                         "task; see docs/distributed.md)")
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        assert task["type"] in ("worker", "chief") and isinstance(task["index"], int) and workers
    except (ValueError, KeyError, TypeError, AssertionError):
        raise InputError(f"TF_CONFIG: not a cluster definition like {{\"cluster\": {{\"worker\": [\"host:port\", "
                         f"...]}}, \"task\": {{\"type\": \"worker\", \"index\": 0}}}}, got {text[:200]!r}") from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder (worker 0 of a multiworker cluster; always, otherwise)."""
    return bool(strategy.extended.should_checkpoint)


def is_multiworker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def check_batch(strategy: tf.distribute.Strategy, batch_size: int):
    """An InputError unless the global batch splits evenly over the replicas (equal batches: the mean of the
    replicas' means is the global mean)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise InputError(f"train.batch_size: {batch_size} does not split over {replicas} replicas (use a multiple "
                         f"of {replicas})")


def distribute_dataset(strategy: tf.distribute.Strategy, make):
    """The distributed dataset of `make(shard, split)` (a `make_dataset` with those arguments): input pipeline k
    of n takes the k-th part of every global batch, as `split` batches, one per replica it feeds, in replica
    order (the order tf.distribute hands a pipeline's batches to its replicas)."""
    if strategy.num_replicas_in_sync == 1 and not is_multiworker(strategy):
        return make((0, 1), 1)

    def dataset(context: tf.distribute.InputContext):
        split = context.num_replicas_in_sync // context.num_input_pipelines
        return make((context.input_pipeline_id, context.num_input_pipelines), split)

    return strategy.distribute_datasets_from_function(dataset)


def step_functions(model, strategy: tf.distribute.Strategy, jit_compile: bool = False):
    """(train, test): compiled functions of a (distributed) batch that run the model's replica step on every
    replica and add the means over the replicas to the model's running means; they return those means.

    `jit_compile` compiles the training step with XLA where the step is one program (one replica): across
    replicas the gradient sum and the optimizer's cross-replica update are not XLA-compilable.
    """

    def mean(value):
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)

    def run(replica_step, batch):
        loss, terms = strategy.run(replica_step, args=(batch,))
        return model.record(mean(loss), {name: mean(value) for name, value in terms.items()})

    jit = jit_compile and strategy.num_replicas_in_sync == 1 and not is_multiworker(strategy)
    train = tf.function(lambda batch: run(model.replica_train_step, batch), jit_compile=jit or None,
                        reduce_retracing=True)
    test = tf.function(lambda batch: run(model.replica_test_step, batch), reduce_retracing=True)
    return train, test


# Errors of a collective whose peer died or stopped answering (killed worker, lost machine, timeout).
WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                 tf.errors.CancelledError, tf.errors.InternalError)
