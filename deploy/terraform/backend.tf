# Queues, tables and SSM parameters for AIRUNNER_STORE_TYPE=sqs.

locals {
  queue_visibility_timeout = 300
  queue_receive_wait       = 20
  queue_retention          = 1209600 # 14 days
  # A message goes to its dead-letter queue after as many receives as a job
  # may have runs: the server recycles every receive that is not a run, and
  # fails the job whose message lands there ("lost its worker N times").
  max_receive_count = var.max_attempts
}

# SQS: a default and a priority queue, each with a dead-letter queue.

resource "aws_sqs_queue" "default_dlq" {
  name                       = "${local.name}-default-dlq"
  visibility_timeout_seconds = local.queue_visibility_timeout
  receive_wait_time_seconds  = local.queue_receive_wait
  message_retention_seconds  = local.queue_retention
  sqs_managed_sse_enabled    = true
}

resource "aws_sqs_queue" "default" {
  name                       = "${local.name}-default"
  visibility_timeout_seconds = local.queue_visibility_timeout
  receive_wait_time_seconds  = local.queue_receive_wait
  message_retention_seconds  = local.queue_retention
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.default_dlq.arn
    maxReceiveCount     = local.max_receive_count
  })
}

resource "aws_sqs_queue" "priority_dlq" {
  name                       = "${local.name}-priority-dlq"
  visibility_timeout_seconds = local.queue_visibility_timeout
  receive_wait_time_seconds  = local.queue_receive_wait
  message_retention_seconds  = local.queue_retention
  sqs_managed_sse_enabled    = true
}

resource "aws_sqs_queue" "priority" {
  name                       = "${local.name}-priority"
  visibility_timeout_seconds = local.queue_visibility_timeout
  receive_wait_time_seconds  = local.queue_receive_wait
  message_retention_seconds  = local.queue_retention
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.priority_dlq.arn
    maxReceiveCount     = local.max_receive_count
  })
}

# One more queue, with its dead-letter queue, per name in var.extra_queues:
# the same settings as the two above.

resource "aws_sqs_queue" "extra_dlq" {
  for_each                   = toset(var.extra_queues)
  name                       = "${local.name}-${each.key}-dlq"
  visibility_timeout_seconds = local.queue_visibility_timeout
  receive_wait_time_seconds  = local.queue_receive_wait
  message_retention_seconds  = local.queue_retention
  sqs_managed_sse_enabled    = true
}

resource "aws_sqs_queue" "extra" {
  for_each                   = toset(var.extra_queues)
  name                       = "${local.name}-${each.key}"
  visibility_timeout_seconds = local.queue_visibility_timeout
  receive_wait_time_seconds  = local.queue_receive_wait
  message_retention_seconds  = local.queue_retention
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.extra_dlq[each.key].arn
    maxReceiveCount     = local.max_receive_count
  })
}

# DynamoDB: jobs (GSI1 lists a queue newest first; a request id's job is found
# by its claim item, so no index on request_id) and job events (one item per
# event, expired by TTL). docs/ARCHITECTURE.md has the data model.

resource "aws_dynamodb_table" "jobs" {
  name                        = "airunner_jobs${var.dynamodb_table_suffix}"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "job_id"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "job_id"
    type = "S"
  }

  attribute {
    name = "queue"
    type = "S"
  }

  attribute {
    name = "created_at"
    type = "N"
  }

  global_secondary_index {
    name            = "GSI1"
    hash_key        = "queue"
    range_key       = "created_at"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "job_events" {
  name                        = "airunner_job_events${var.dynamodb_table_suffix}"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "job_id"
  range_key                   = "sequence"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "job_id"
    type = "S"
  }

  attribute {
    name = "sequence"
    type = "N"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }
}

# SSM: the task token signing secret, and the OTEL settings when they are given.

resource "random_password" "token_signing_secret" {
  length  = 32
  special = false
}

resource "aws_ssm_parameter" "token_signing_secret" {
  name        = "${local.ssm_prefix}/token-signing-secret"
  description = "HMAC secret for airunner task tokens (AIRUNNER_TOKEN_SIGNING_SECRET)"
  type        = "SecureString"
  value       = random_password.token_signing_secret.result
}

resource "aws_ssm_parameter" "otel_exporter_endpoint" {
  count       = var.otel_exporter_endpoint != "" ? 1 : 0
  name        = "${local.ssm_prefix}/otel-exporter-endpoint"
  description = "OTEL_EXPORTER_OTLP_ENDPOINT for the airunner server"
  type        = "SecureString"
  value       = var.otel_exporter_endpoint
}

resource "aws_ssm_parameter" "otel_exporter_headers" {
  # The headers hold an API key: the variable is sensitive, whether it is set is not.
  count       = nonsensitive(var.otel_exporter_headers != "") ? 1 : 0
  name        = "${local.ssm_prefix}/otel-exporter-headers"
  description = "OTEL_EXPORTER_OTLP_HEADERS for the airunner server"
  type        = "SecureString"
  value       = var.otel_exporter_headers
}
