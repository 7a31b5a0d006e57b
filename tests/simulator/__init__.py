"""The Raft simulator: many RaftCores on a virtual clock, network and disks, with a checker
of Raft's safety properties. Test code only; nothing under node/ imports it."""
