//! Request/reply over RabbitMQ direct reply-to (`amq.rabbitmq.reply-to`). (Not yet built.)
