"""PACS ingestion: a DICOM export tree to training arrays, strictly, with a quarantine report."""
