//! Hostile input: mqtt (cases are added by the hardening work).
