variable "aws_region" {
  description = "AWS region to deploy into"
  type        = string
  default     = "us-east-1"
}

variable "environment" {
  description = "Environment name, part of every resource name (airunner-{env}-...)"
  type        = string
  default     = "dev"

  validation {
    condition     = can(regex("^[a-z0-9-]{1,20}$", var.environment))
    error_message = "environment must be 1-20 lowercase letters, digits or dashes."
  }
}

variable "container_image" {
  description = "The airunner image (built from the Containerfile), e.g. ghcr.io/acme/airunner:1.2.3"
  type        = string
}

variable "task_cpu" {
  description = "Fargate task CPU units (256 = 0.25 vCPU)"
  type        = number
  default     = 512
}

variable "task_memory" {
  description = "Fargate task memory (MiB)"
  type        = number
  default     = 1024
}

variable "desired_count" {
  description = "Number of API replicas"
  type        = number
  default     = 2
}

variable "max_attempts" {
  description = "Runs a job may have before it fails (AIRUNNER_MAX_ATTEMPTS; also the queues' maxReceiveCount)"
  type        = number
  default     = 3

  validation {
    condition     = var.max_attempts >= 1 && var.max_attempts <= 25
    error_message = "max_attempts must be between 1 and 25."
  }
}

variable "extra_queues" {
  description = "Queues besides default and priority, each with a dead-letter queue like theirs; the server serves queue NAME from AIRUNNER_SQS_QUEUE_<NAME> (upper case, '-' as '_')"
  type        = list(string)
  default     = []

  validation {
    # 46: the longest that keeps airunner-{environment}-{name}-dlq within SQS's 80 characters.
    condition = alltrue([
      for name in var.extra_queues : can(regex("^[a-z0-9][a-z0-9-]{0,45}$", name))
    ])
    error_message = "extra_queues: each name must be 1-46 lowercase letters, digits or dashes, starting with a letter or digit."
  }

  validation {
    condition     = length(distinct(var.extra_queues)) == length(var.extra_queues) && !contains(var.extra_queues, "default") && !contains(var.extra_queues, "priority")
    error_message = "extra_queues: each name once, and neither default nor priority (always made)."
  }
}

variable "events_ttl_days" {
  description = "Days job events are kept in DynamoDB (AIRUNNER_EVENTS_TTL_DAYS; 0 keeps them)"
  type        = number
  default     = 30
}

variable "domain_name" {
  description = "Optional DNS name for the API (e.g. airunner.example.com). Empty: plain HTTP on the load balancer's name"
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone of domain_name (for the certificate's validation and the alias record); required with domain_name"
  type        = string
  default     = ""
}

variable "allowed_cidr_blocks" {
  description = "Networks that may reach the load balancer"
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "lb_idle_timeout" {
  description = "Load balancer idle timeout (s). Long polls idle for 20 s; event streams of a quiet job idle longer"
  type        = number
  default     = 3600
}

variable "deletion_protection" {
  description = "Protect the load balancer and tables from deletion"
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for the server's logs"
  type        = number
  default     = 30
}

variable "vpc_id" {
  description = "Existing VPC to use. Empty: a new VPC is created"
  type        = string
  default     = ""
}

variable "public_subnet_ids" {
  description = "Existing public subnets for the load balancer (with vpc_id)"
  type        = list(string)
  default     = []
}

variable "private_subnet_ids" {
  description = "Existing private subnets for the tasks, with a route to AWS APIs (with vpc_id)"
  type        = list(string)
  default     = []
}

variable "vpc_cidr" {
  description = "CIDR of the new VPC (when vpc_id is empty)"
  type        = string
  default     = "10.40.0.0/16"
}

variable "otel_exporter_endpoint" {
  description = "OpenTelemetry OTLP exporter endpoint (e.g., https://api.honeycomb.io)"
  type        = string
  default     = ""
}

variable "otel_exporter_headers" {
  description = "OpenTelemetry OTLP exporter headers (e.g., x-honeycomb-team=API_KEY)"
  type        = string
  default     = ""
  sensitive   = true
}

variable "dynamodb_table_suffix" {
  description = "Appended to the table names airunner_jobs and airunner_job_events (e.g. _prod), for several environments in one account"
  type        = string
  default     = ""
}
