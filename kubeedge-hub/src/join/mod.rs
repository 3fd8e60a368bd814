//! Node join: the cluster CA, certificates and bootstrap tokens (being written).
