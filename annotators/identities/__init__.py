"""The identities condition: the 1-3 main subjects of a clip found with YOLOX and SAM 2, as RGBA
reference crops, a stitched reference image, per-frame boxes and low-resolution masks."""

from any2capins.annotators.identities.annotator import IdentitiesAnnotator, IdentitiesConfig
from any2capins.annotators.identities.condition import IdentitiesConditionType

# The condition type names its annotator here, once both exist: the annotator's `writes`
# is derived from the condition type, so neither module can import the other first.
IdentitiesConditionType.annotators = (IdentitiesAnnotator,)

__all__ = ["IdentitiesAnnotator", "IdentitiesConditionType", "IdentitiesConfig"]
