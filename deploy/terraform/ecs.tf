# The task definition, and the cluster, service, logs and JWT key pair it needs.

# Bearer tokens: ES256. The private key stays in SSM for whoever mints tokens
# (airunner-cli token --key); only the public key reaches the task.
resource "tls_private_key" "jwt" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "aws_ssm_parameter" "jwt_private_key" {
  name        = "${local.ssm_prefix}/jwt-private-key"
  description = "ES256 private key (PEM) that signs airunner bearer tokens"
  type        = "SecureString"
  value       = tls_private_key.jwt.private_key_pem
}

resource "aws_ssm_parameter" "jwt_public_key" {
  name        = "${local.ssm_prefix}/jwt-public-key"
  description = "ES256 public key (PEM) the airunner server checks bearer tokens with (JWT_PUBLIC_KEY)"
  type        = "SecureString"
  value       = tls_private_key.jwt.public_key_pem
}

resource "aws_cloudwatch_log_group" "server" {
  name              = "/ecs/${local.name}"
  retention_in_days = var.log_retention_days
}

resource "aws_ecs_cluster" "main" {
  name = "${local.name}-cluster"

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_security_group" "tasks" {
  name        = "${local.name}-tasks"
  description = "airunner server tasks"
  vpc_id      = local.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "tasks_from_lb" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "From the load balancer"
  referenced_security_group_id = aws_security_group.lb.id
  ip_protocol                  = "tcp"
  from_port                    = local.container_port
  to_port                      = local.container_port
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  security_group_id = aws_security_group.tasks.id
  description       = "AWS APIs over HTTPS (SQS, DynamoDB, SSM, ECR, CloudWatch, OTLP)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

locals {
  task_environment = [
    { name = "AIRUNNER_STORE_TYPE", value = "sqs" },
    { name = "AIRUNNER_SQS_QUEUE_DEFAULT", value = aws_sqs_queue.default.url },
    { name = "AIRUNNER_SQS_QUEUE_PRIORITY", value = aws_sqs_queue.priority.url },
    { name = "AIRUNNER_DYNAMODB_JOBS_TABLE", value = aws_dynamodb_table.jobs.name },
    { name = "AIRUNNER_DYNAMODB_EVENTS_TABLE", value = aws_dynamodb_table.job_events.name },
    { name = "AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT", value = "300" },
    { name = "AIRUNNER_EVENTS_TTL_DAYS", value = tostring(var.events_ttl_days) },
    { name = "AIRUNNER_MAX_ATTEMPTS", value = tostring(var.max_attempts) },
    { name = "AWS_REGION", value = var.aws_region },
    { name = "OTEL_SERVICE_NAME", value = "airunner-server" },
    { name = "OTEL_RESOURCE_ATTRIBUTES", value = "deployment.environment=${var.environment}" },
  ]

  # Queue NAME of var.extra_queues is served from AIRUNNER_SQS_QUEUE_<NAME>.
  extra_queue_environment = [
    for name, queue in aws_sqs_queue.extra : {
      name  = "AIRUNNER_SQS_QUEUE_${upper(replace(name, "-", "_"))}"
      value = queue.url
    }
  ]

  task_secrets = concat(
    [
      { name = "JWT_PUBLIC_KEY", valueFrom = aws_ssm_parameter.jwt_public_key.arn },
      { name = "AIRUNNER_TOKEN_SIGNING_SECRET", valueFrom = aws_ssm_parameter.token_signing_secret.arn },
    ],
    [for p in aws_ssm_parameter.otel_exporter_endpoint : { name = "OTEL_EXPORTER_OTLP_ENDPOINT", valueFrom = p.arn }],
    [for p in aws_ssm_parameter.otel_exporter_headers : { name = "OTEL_EXPORTER_OTLP_HEADERS", valueFrom = p.arn }],
  )
}

resource "aws_ecs_task_definition" "server" {
  family                   = local.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([
    {
      name                   = local.container_name
      image                  = var.container_image
      essential              = true
      command                = ["airunner-server", "rpc-server", "--listen", "0.0.0.0:${local.container_port}"]
      portMappings           = [{ containerPort = local.container_port, protocol = "tcp" }]
      environment            = concat(local.task_environment, local.extra_queue_environment)
      secrets                = local.task_secrets
      readonlyRootFilesystem = true
      # ECS sends SIGTERM, then SIGKILL after this; the server drains within 25 s.
      stopTimeout = 30
      healthCheck = {
        command = [
          "CMD", "python", "-c",
          "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${local.container_port}/health', timeout=3)",
        ]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 10
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          "awslogs-group"         = aws_cloudwatch_log_group.server.name
          "awslogs-region"        = var.aws_region
          "awslogs-stream-prefix" = "server"
        }
      }
    }
  ])

  depends_on = [
    aws_sqs_queue.default,
    aws_dynamodb_table.jobs,
    aws_iam_role_policy.task_sqs_dynamodb
  ]
}

resource "aws_ecs_service" "server" {
  name                              = local.name
  cluster                           = aws_ecs_cluster.main.id
  task_definition                   = aws_ecs_task_definition.server.arn
  desired_count                     = var.desired_count
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 30
  propagate_tags                    = "SERVICE"

  network_configuration {
    subnets          = local.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.server.arn
    container_name   = local.container_name
    container_port   = local.container_port
  }

  # A release whose tasks never get healthy rolls back to the previous one.
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  depends_on = [aws_lb_listener.http, aws_lb_listener.https, aws_iam_role_policy.execution_ssm]
}
