"""Loading strategies; each is one module here plus one yaml in conf/loader/."""

from loaderlab.loaders.base import Feed, Loader
from loaderlab.loaders.decode import BadImageError, ImageDecoder, ImageSpec, decode_resize

__all__ = ["BadImageError", "Feed", "ImageDecoder", "ImageSpec", "Loader", "decode_resize"]
