//! Who may send what: webhook signature schemes (`signature`).

pub mod signature;
