"""DICOMweb: pull a study or series (QIDO-RS search + WADO-RS retrieve) and push files (STOW-RS), with
dicomweb-client.

- Credentials come from the environment or a netrc file (:mod:`medpipe.io.dicomweb.auth`), never from the
  command line; messages and records name the server without userinfo.
- TLS certificates are verified unless ``insecure``.
- Network failures (refused or dropped connections, timeouts, HTTP 408/429/502/503/504) are retried
  ``retries`` times with exponential backoff, then raise :class:`RemoteError` naming the server and the step.
- A pull lists the instances (QIDO-RS), streams each series in one WADO-RS request and fetches any instance
  the stream missed on its own. Instances are written atomically as ``OUT/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
  (UIDs checked to be UIDs, so a server cannot choose a path); instances already there are kept (a re-run
  resumes).
- A push checks every file first (Orthanc silently drops files without Study/Series/SOP Instance UIDs) and
  reports each instance as stored only when the server's STOW-RS response lists it as stored.
"""

from medpipe.io.dicomweb.client import DicomwebOptions
from medpipe.io.dicomweb.retrieve import PulledSeries, PullResult, pull
from medpipe.io.dicomweb.store import PushedInstance, PushResult, collect_dicom_files, push

__all__ = ["DicomwebOptions", "PullResult", "PulledSeries", "PushResult", "PushedInstance", "collect_dicom_files",
           "pull", "push"]
