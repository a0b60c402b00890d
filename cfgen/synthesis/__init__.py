"""Text-to-volume synthesis (`cfgen synth3d`): a low-resolution base stage, optionally with
anatomy label channels generated jointly, then a super-resolution stage run in sliding windows
(MedSyn, section IV)."""
