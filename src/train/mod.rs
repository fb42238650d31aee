//! Training SAM's prompt encoder and mask decoder on candle's autograd (the CPU backend): the
//! paper's loss ([`loss`]).

pub mod loss;
