"""A patient-controlled shared medical record: a FHIR R4 server on MongoDB."""

__version__ = "0.1.0"
