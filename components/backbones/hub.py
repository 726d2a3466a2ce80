"""TF Hub image feature vectors as backbones: ``--backbone hub:HANDLE``.

HANDLE is a TF Hub / Kaggle model URL (``https://tfhub.dev/...``,
``https://www.kaggle.com/models/...``), a ``gs://`` tarball or directory, or a local directory
holding a TF2 SavedModel image feature vector (the format ``hub.KerasLayer`` loads: a callable
object taking float RGB ``[B, H, W, 3]`` and returning features ``[B, D]``).

Why not ``tensorflow_hub`` itself: tensorflow-hub 0.15.0, the newest TFX 1.16 allows, imports
``tensorflow.compat.v1.estimator`` on ``import tensorflow_hub``, which TF 2.16 removed, so the
import fails on graft's pins. This module does the two things graft needs from it, mirroring
tensorflow_hub 0.15's code:

- resolving a handle (``resolver.py``, ``compressed_module_resolver.py``): an http(s) handle is
  fetched as ``HANDLE?tf-hub-format=compressed`` (``hub.tensorflow.google.cn`` handles straight
  from its GCS mirror), a ``gs://...tar.gz`` is read as is; the tarball is extracted (regular
  files and directories only, no path leaving the target) into a temporary directory renamed
  into place as ``$TFHUB_CACHE_DIR/<sha1 of the handle>`` (default
  ``<system temp>/tfhub_modules``), so a module tensorflow_hub cached is reused here and vice
  versa. Anything else is a path (local or ``gs://``). TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED
  (reading from GCS without caching) is not mirrored.
- :class:`HubLayer`, what ``hub.KerasLayer(handle)`` does for a TF2 SavedModel:
  ``tf.saved_model.load``, the loaded object's variables registered as the layer's weights
  (trainable ones as trainable), its regularization losses added, and the module called with
  ``training=True`` only when the layer is trainable and called in training mode.

graft calls the base with ``training=False`` (like every pretrained backbone), so a module with
a ``training`` argument keeps BatchNorm in inference mode and dropout off in both phases. Phase 2
unfreezes the module as one block: all its trainable variables (BatchNorm's scale and offset
included, as ``hub.KerasLayer(trainable=True)`` does; its moving statistics stay fixed).

Preprocessing (in the Transform graph, like every backbone's): 0..255 RGB scaled linearly to
the module's value range (``TrainingConfig.hub_value_range``, default [0, 1], the TF Hub image
convention). The input size is ``--image-size`` (default :data:`DEFAULT_SIZE`).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.parse
import urllib.request
import uuid

import tensorflow as tf
import tf_keras
from tensorflow.python.util import tf_inspect

from components.backbones import registry

PREFIX = "hub:"
DEFAULT_SIZE = 224           # the input size of most TF Hub image feature vectors
DEFAULT_VALUE_RANGE = "0,1"  # TF Hub's image convention: float RGB in [0, 1]
CACHE_ENV = "TFHUB_CACHE_DIR"
_COMPRESSED_QUERY = ("tf-hub-format", "compressed")
_HUB_CN = "https://hub.tensorflow.google.cn/"
_GCS_CN = "https://gcs.tensorflow.google.cn/tfhub-modules/%s.tar.gz"
_CHUNK = 1 << 20


def is_hub(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def handle_of(name: str) -> str:
    handle = name[len(PREFIX):].strip()
    if not handle:
        raise ValueError(f"backbone {name!r}: hub: needs a handle, e.g. "
                         "hub:https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/"
                         "feature_vector/5 or hub:/path/to/saved_model")
    return handle


def parse_value_range(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi) with lo < hi; ValueError naming the setting otherwise."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"hub_value_range {text!r}: expected 'LO,HI', e.g. '0,1' or "
                         "'-1,1'") from None
    if not lo < hi:
        raise ValueError(f"hub_value_range {text!r}: LO must be below HI")
    return lo, hi


# --- handle resolution (tensorflow_hub 0.15's resolvers) -----------------------------------
def is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://"))


def _is_tarfile(handle: str) -> bool:
    return handle.endswith((".tar", ".tar.gz", ".tgz"))


def is_remote(handle: str) -> bool:
    """True for handles that are downloaded into the cache (not read in place)."""
    return is_url(handle) or (handle.startswith("gs://") and _is_tarfile(handle))


def download_url(handle: str) -> str:
    """The URL a handle's compressed SavedModel is fetched from (tensorflow_hub's rule)."""
    if handle.startswith(_HUB_CN):
        return _GCS_CN % handle[len(_HUB_CN):]
    parsed = list(urllib.parse.urlparse(handle))
    query = urllib.parse.parse_qsl(parsed[4])
    query.append(_COMPRESSED_QUERY)
    parsed[4] = urllib.parse.urlencode(query)
    return urllib.parse.urlunparse(parsed)


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "tfhub_modules")


def module_dir(handle: str) -> str:
    return os.path.join(cache_dir(), hashlib.sha1(handle.encode("utf8")).hexdigest())


def _urlopen(url: str):
    if url.startswith("gs://"):
        return tf.io.gfile.GFile(url, "rb")
    return urllib.request.urlopen(urllib.request.Request(url), timeout=300)


def _member_path(dst: str, name: str) -> str:
    rel = os.path.normpath(name.lstrip("/"))
    if rel == ".":
        return dst
    merged = os.path.join(dst, rel)
    if rel.startswith("..") or not merged.startswith(dst + os.sep):
        raise ValueError(f"tar member {name!r} leaves the module directory")
    return merged


def extract(fileobj, dst: str) -> None:
    """Stream a (gzipped) tar into ``dst``: regular files and directories only."""
    with tarfile.open(mode="r|*", fileobj=fileobj) as tar:
        for member in tar:
            path = _member_path(dst, member.name)
            if member.isdir():
                os.makedirs(path, exist_ok=True)
            elif member.isfile():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                src = tar.extractfile(member)
                with open(path, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            else:
                raise ValueError(f"tar member {member.name!r} is not a file or directory")


def _cached(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


def download(handle: str, fetch=None) -> str:
    """The cache directory of a remote handle, fetched and extracted first if not cached.

    ``fetch(url)`` returns a readable binary file object (default: urllib / tf.io.gfile).
    Extraction goes to a temporary directory beside the target, renamed into place when
    complete: a killed download leaves no half module, and of two concurrent downloads the
    first rename wins and the other is discarded.
    """
    target = module_dir(handle)
    if _cached(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = "%s.%s.tmp" % (target, uuid.uuid4().hex)
    url = handle if handle.startswith("gs://") else download_url(handle)
    try:
        with (fetch or _urlopen)(url) as f:
            try:
                extract(f, tmp)
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ValueError(f"hub:{handle}: {url} is not a SavedModel tarball "
                                 f"({type(e).__name__}: {e})") from None
        with open(target + ".descriptor.txt", "w") as d:
            d.write("Module: %s\nDownload Time: %s\nDownloader Hostname: %s (PID:%d)"
                    % (handle, datetime.datetime.today(), socket.gethostname(), os.getpid()))
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cached(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(handle: str, fetch=None) -> str:
    """A local (or gs://) SavedModel directory for a handle; clear error if there is none."""
    path = download(handle, fetch) if is_remote(handle) else handle
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"hub:{handle}: no such SavedModel directory (a hub: handle is "
                                "a TF Hub/Kaggle https:// URL or a SavedModel directory)")
    if tf.io.gfile.exists(os.path.join(path, "tfhub_module.pb")):
        raise ValueError(f"hub:{handle}: a TF1 Hub module (tfhub_module.pb); graft loads TF2 "
                         "SavedModels only (the TF2 version of the module)")
    if not any(tf.io.gfile.exists(os.path.join(path, n))
               for n in ("saved_model.pb", "saved_model.pbtxt")):
        raise ValueError(f"hub:{handle}: {path} holds neither saved_model.pb nor "
                         "saved_model.pbtxt")
    return path


def fingerprint(backbone: str) -> str:
    """For ``hub:<local directory>``: a hash of its saved_model.pb and variables index (which
    holds a checksum of every variable), so a module changed in place is a new Trainer cache
    key. Empty for URLs (the handle names a published version) and non-hub backbones, and for
    a directory that does not exist here (the Trainer reports it)."""
    if not is_hub(backbone):
        return ""
    handle = handle_of(backbone)
    if "://" in handle:
        return ""
    h = hashlib.sha256()
    found = False
    for name in ("saved_model.pb", "saved_model.pbtxt",
                 os.path.join("variables", "variables.index")):
        path = os.path.join(handle, name)
        if os.path.isfile(path):
            found = True
            h.update(name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    h.update(chunk)
    return h.hexdigest()[:16] if found else ""


# --- the Keras layer -----------------------------------------------------------------------
def _has_training_argument(func) -> bool:
    if not callable(func):
        return False
    spec = tf_inspect.getfullargspec(func.__call__)
    return "training" in spec.args or "training" in spec.kwonlyargs


class HubLayer(tf_keras.layers.Layer):
    """A TF2 SavedModel as a tf_keras layer (``hub.KerasLayer(handle)`` without tensorflow_hub).
    Its variables are the layer's weights and are saved with the model, so a saved model does
    not need the handle any more."""

    def __init__(self, handle: str, trainable: bool = False, fetch=None, **kwargs):
        self._handle = handle
        self._func = tf.saved_model.load(resolve(handle, fetch))
        if not callable(self._func):
            raise ValueError(f"hub:{handle}: the SavedModel is not callable; an image feature "
                             "vector for hub.KerasLayer is (its __call__ maps images to "
                             "features)")
        self._has_training = _has_training_argument(self._func)
        kwargs.setdefault("dtype", "float32")  # a SavedModel's dtypes are fixed
        super().__init__(trainable=trainable, **kwargs)
        trainable_ids = set()
        for v in getattr(self._func, "trainable_variables", []):
            self._add_existing_weight(v, True)
            trainable_ids.add(id(v))
        for v in getattr(self._func, "variables", []):
            if id(v) not in trainable_ids:
                self._add_existing_weight(v, False)
        for loss in getattr(self._func, "regularization_losses", []):
            self.add_loss(lambda loss=loss: loss() if self.trainable else 0.0)

    def _add_existing_weight(self, weight, trainable):
        self.add_weight(name=weight.name, shape=weight.shape, dtype=weight.dtype,
                        trainable=trainable, experimental_autocast=False,
                        getter=lambda *_, **__: weight)

    @property
    def has_training_argument(self) -> bool:
        return self._has_training

    @property
    def handle(self) -> str:
        return self._handle

    def input_shapes(self) -> str:
        """The input shapes the module's traced __call__ accepts, for error messages."""
        try:
            shapes = {str(f.structured_input_signature[0][0].shape)
                      for f in self._func.__call__.concrete_functions}
        except (AttributeError, IndexError, TypeError):
            return ""
        return " or ".join(sorted(shapes))

    def call(self, inputs, training=None):
        if not self._has_training:
            return self._func(inputs)
        # Like hub.KerasLayer (and BatchNormalization): training mode only when trainable.
        if not self.trainable or training is None:
            training = False
        return tf.__internal__.smart_cond.smart_cond(
            training, lambda: self._func(inputs, training=True),
            lambda: self._func(inputs, training=False))

    def get_config(self):
        return {**super().get_config(), "handle": self._handle}


# --- the backbone --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HubBackbone(registry.Backbone):
    """A ``hub:`` backbone: the registry's Backbone interface over a Hub module."""

    handle: str = ""

    def preprocess(self, images):
        """float32 RGB in 0..255 -> linearly onto ``value_range``. Pure TF ops."""
        lo, hi = self.value_range
        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        return images * ((hi - lo) / 255.0) + lo

    def build_base(self, weights="imagenet", image_size=None, fetch=None):
        """tf_keras.Model: (s, s, 3) preprocessed images -> the module's features [B, D]."""
        if weights != "imagenet":
            raise ValueError(f"backbone {self.name}: a hub: module brings its own weights; "
                             f"--weights must stay 'imagenet' (got {weights!r})")
        size = self.resolve_size(image_size)
        inputs = tf_keras.Input((size, size, 3), name="hub_input")
        layer = HubLayer(self.handle, fetch=fetch, name="hub_module")
        try:
            features = layer(inputs, training=False)
        except (ValueError, TypeError):
            raise ValueError(f"backbone {self.name}: the module does not take float32 "
                             f"[batch, {size}, {size}, 3] images; it takes "
                             f"{layer.input_shapes() or 'other inputs'} (--image-size?)") from None
        if len(features.shape) != 2:
            raise ValueError(f"backbone {self.name}: the module returns shape "
                             f"{features.shape}, not [batch, features]; graft takes image "
                             "feature vectors")
        return tf_keras.Model(inputs, features, name="hub_base")

    def build_classifier(self, weights="imagenet"):
        raise ValueError(f"backbone {self.name}: a hub: feature vector has no ImageNet head")


def backbone(name: str, value_range: str = DEFAULT_VALUE_RANGE) -> HubBackbone:
    return HubBackbone(name, DEFAULT_SIZE, "hub", parse_value_range(value_range),
                       handle=handle_of(name))


def export(name: str, path: str, image_size: int | None = None) -> str:
    """Write registry backbone ``name`` (ImageNet weights) as a TF2 SavedModel image feature
    vector in TF Hub's format: float RGB in [0, 1], ``[B, s, s, 3]`` -> pooled features
    ``[B, D]``, callable with a ``training`` argument. What ``hub:<path>`` loads; the tests and
    bench/hub.py compare it with the native backbone."""
    native = registry.get_backbone(name)
    size = native.resolve_size(image_size)
    base = native.build_base("imagenet", size)
    inputs = tf_keras.Input((size, size, 3), name="images")
    x = tf_keras.layers.Lambda(lambda t: native.preprocess(t * 255.0), name="preprocess")(inputs)
    features = tf_keras.layers.GlobalAveragePooling2D(name="pool")(base(x))
    tf.saved_model.save(tf_keras.Model(inputs, features, name=f"{name}_feature_vector"), path)
    return path
