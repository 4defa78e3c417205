"""Artifacts by digest: files a manifest names by URL and sha256, fetched once and placed read-only.

``cache`` keeps verified objects under ``<state>/artifacts/sha256/<hex>``, shared by every
service and revision; ``fetch`` reads them from S3 (boto3) or HTTP(S) (httpx, resumable);
``place`` brings what a revision needs into its service folder (a hard link, else a copy),
fetching at most ``parallel`` files at once and each digest only once.
"""

from deployer.artifacts.cache import ContentCache
from deployer.artifacts.fetch import Fetchers, FetchOptions
from deployer.artifacts.place import Artifacts, Placed

__all__ = ["Artifacts", "ContentCache", "FetchOptions", "Fetchers", "Placed"]
