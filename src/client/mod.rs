//! CoreMQ's RocketMQ client, over the wire only (it reaches brokers and name servers through
//! the remoting protocol, never the store). Blocking and thread-based: an application needs no
//! async runtime. A producer, and a clustering push consumer.

pub mod consumer;
pub mod producer;
pub mod remoting;

pub use consumer::{
    AllocateStrategy, ConsumeContext, ConsumeFromWhere, ConsumeResult, ConsumerOptions,
    LitePullConsumer, MessageExt, MessageModel, PushConsumer,
};
pub use producer::{
    Message, MessageQueue, Producer, ProducerError, ProducerOptions, SendCallback, SendResult,
    SendStatus,
};
