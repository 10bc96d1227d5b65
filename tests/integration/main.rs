//! One linked integration binary (keeps link time down on 2 cores).

mod queue_basics;
