//! The media core against simulated str0m peers on a virtual network and clock.
//!
//! One test binary: the scenarios run in parallel threads and link once.

mod sim;

mod demux;
mod errors;
mod forwarding;
mod keyframes;
mod lifecycle;
mod nack;
mod simulcast;
mod whep;
