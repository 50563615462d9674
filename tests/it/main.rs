//! Integration tests against the real local stack that `make up` starts (Apache Kafka on
//! 127.0.0.1:9092, or `REFLEX_TEST_BROKERS`). Every test uses its own random topics and group.

mod action_service;
mod actions;
mod admission;
mod analytics;
mod analytics_repartition;
mod brokers;
mod bundle;
mod chaos;
mod cli;
mod common;
mod crash;
mod faults;
mod http_actions;
mod lake;
mod lake_files;
mod opa;
mod outage;
mod policy;
mod publishers;
mod registry;
mod security;
mod services;
mod telemetry;
mod tls;
mod trace;
mod traces;
