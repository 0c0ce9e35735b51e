"""The teacher-output cache: content-addressed keys, SQLite store, export."""

from workbench.cache.records import ERROR_KINDS, OK, SoftLabel, TeacherOutput, stable_hash
from workbench.cache.store import CacheError, CacheStore, JobSpec

__all__ = ["ERROR_KINDS", "OK", "CacheError", "CacheStore", "JobSpec", "SoftLabel",
           "TeacherOutput", "stable_hash"]
