from processing_clasp.feature_extraction_clasp import ClaspFeatureExtractor
from processing_clasp.processing_clasp import ClaspProcessor

__all__ = ["ClaspFeatureExtractor", "ClaspProcessor"]
