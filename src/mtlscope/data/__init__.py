"""Data plumbing for settings: fingerprints of what a run trains on (``mtlscope.data.fingerprint``)."""
