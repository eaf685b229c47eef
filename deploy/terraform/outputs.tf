output "sqs_queue_urls" {
  description = "Queue URLs by queue name (dead-letter queues under *_dlq), extra_queues included"
  value = merge(
    {
      default      = aws_sqs_queue.default.url
      default_dlq  = aws_sqs_queue.default_dlq.url
      priority     = aws_sqs_queue.priority.url
      priority_dlq = aws_sqs_queue.priority_dlq.url
    },
    { for name, queue in aws_sqs_queue.extra : name => queue.url },
    { for name, queue in aws_sqs_queue.extra_dlq : "${name}_dlq" => queue.url }
  )
}

output "sqs_queue_arns" {
  description = "Queue ARNs by queue name, extra_queues included"
  value = merge(
    {
      default      = aws_sqs_queue.default.arn
      default_dlq  = aws_sqs_queue.default_dlq.arn
      priority     = aws_sqs_queue.priority.arn
      priority_dlq = aws_sqs_queue.priority_dlq.arn
    },
    { for name, queue in aws_sqs_queue.extra : name => queue.arn },
    { for name, queue in aws_sqs_queue.extra_dlq : "${name}_dlq" => queue.arn }
  )
}

output "sqs_queue_environment" {
  description = "The server's AIRUNNER_SQS_QUEUE_<NAME> variables, one per queue"
  value = merge(
    {
      AIRUNNER_SQS_QUEUE_DEFAULT  = aws_sqs_queue.default.url
      AIRUNNER_SQS_QUEUE_PRIORITY = aws_sqs_queue.priority.url
    },
    { for entry in local.extra_queue_environment : entry.name => entry.value }
  )
}

output "dynamodb_jobs_table_name" {
  value = aws_dynamodb_table.jobs.name
}

output "dynamodb_jobs_table_arn" {
  value = aws_dynamodb_table.jobs.arn
}

output "dynamodb_events_table_name" {
  value = aws_dynamodb_table.job_events.name
}

output "dynamodb_events_table_arn" {
  value = aws_dynamodb_table.job_events.arn
}

output "ssm_token_signing_secret_arn" {
  value = aws_ssm_parameter.token_signing_secret.arn
}

output "ssm_otel_exporter_endpoint_arn" {
  description = "Empty when otel_exporter_endpoint is not set"
  value       = one(aws_ssm_parameter.otel_exporter_endpoint[*].arn)
}

output "ssm_otel_exporter_headers_arn" {
  description = "Empty when otel_exporter_headers is not set"
  value       = one(aws_ssm_parameter.otel_exporter_headers[*].arn)
}

output "ssm_jwt_public_key_arn" {
  value = aws_ssm_parameter.jwt_public_key.arn
}

output "ssm_jwt_private_key_name" {
  description = "SSM parameter holding the key that signs bearer tokens (airunner-cli token)"
  value       = aws_ssm_parameter.jwt_private_key.name
}

output "ecs_cluster_name" {
  value = aws_ecs_cluster.main.name
}

output "ecs_service_name" {
  value = aws_ecs_service.server.name
}

output "log_group_name" {
  value = aws_cloudwatch_log_group.server.name
}

output "service_url" {
  description = "Where the API answers"
  value       = local.https ? "https://${var.domain_name}" : "http://${aws_lb.main.dns_name}"
}
