"""tf.data with decoding offloaded to a tf.data service cluster (a dispatcher and its workers).

Service workers run the pipeline's graph in other processes or machines, so the decode must be
TensorFlow ops (a Python/OpenCV function cannot travel): tf_decode, the shared spec in TF ops,
JPEGs at the same reduced libjpeg scale as the other loaders.
Start the servers with `python -m loaderlab.data_service dispatcher|worker`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from loaderlab.data.manifest import Split
from loaderlab.data.storage import is_url
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder
from loaderlab.loaders.tf_decode import tf_decode_resize


class TFDataServiceLoader(Loader):
    """Shuffle and batch paths locally; read, decode and resize on the service's workers."""

    name = "tfdata_service"
    needs_service = True

    def __init__(
        self,
        dispatcher: str = "grpc://127.0.0.1:5050",
        processing_mode: str = "distributed_epoch",
        shuffle_buffer: int | None = None,
        prefetch: int | None = None,
    ):
        self.dispatcher = dispatcher
        self.processing_mode = processing_mode
        self.shuffle_buffer = shuffle_buffer
        self.prefetch = prefetch or tf.data.AUTOTUNE

    def dataset(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> tf.data.Dataset:
        """The pipeline; everything before `distribute` runs on the service's workers."""
        url = next((p for p in split.paths[:1] if is_url(p) and not p.startswith("gs://")), None)
        if url:
            # TensorFlow 2.21 reads no s3:// (tensorflow-io 0.37.1, which did, fails to load on it:
            # undefined symbol), and a Python reader cannot travel to the service's workers.
            raise ValueError(
                f"loader=tfdata_service cannot read {url}: its workers read files with TensorFlow ops, "
                "which read local paths and gs:// only. Use loader=tfdata or loader=packed for data in "
                f"a store. Received: path={url}"
            )
        spec = decoder.spec
        ds = tf.data.Dataset.from_tensor_slices((list(split.paths), split.labels.astype(np.int32)))
        if training:
            ds = ds.shuffle(self.shuffle_buffer or len(split), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda p, y: (tf_decode_resize(p, spec), y), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size).apply(
            tf.data.experimental.service.distribute(self.processing_mode, self.dispatcher)
        )
        # Each worker ends its share of the epoch with a partial batch; regroup locally so every
        # epoch has the same number of steps (Keras stops training when an epoch comes up short).
        ds = ds.unbatch().batch(batch_size)
        # The service hides the cardinality; state it so Keras knows the epoch length up front.
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches(len(split), batch_size)))
        return ds.prefetch(self.prefetch)

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """A finite dataset served by the cluster; fit iterates it once per epoch."""
        return Feed(x=self.dataset(split, decoder, batch_size, training, seed))
