"""Images on disk → a memory-mapped uint8 cache → batches on the model's device."""
from .cache import ImageCache, load_cache, open_images
from .decode import decode_image
from .loader import BatchStream, epoch_order
from .sources import ImageSource, open_source, open_splits

__all__ = ["ImageCache", "ImageSource", "BatchStream", "decode_image", "epoch_order", "load_cache",
           "open_images", "open_source", "open_splits"]
