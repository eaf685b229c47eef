# airunner on AWS: the API on ECS Fargate behind a load balancer, SQS for delivery,
# DynamoDB as the source of truth. Files by concern:
#   backend.tf  queues, tables, SSM parameters (the token secret, OTEL settings)
#   iam.tf      the task role (SQS, DynamoDB) and the execution role (image, logs, SSM)
#   network.tf  VPC, subnets, NAT, the DynamoDB gateway endpoint (or existing ones)
#   alb.tf      load balancer, target group on /health, HTTPS when a domain is given
#   ecs.tf      cluster, task definition, service, CloudWatch logs, the JWT key pair

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      Project     = "airunner"
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}

locals {
  name = "airunner-${var.environment}"
  # SSM parameters live under one path per environment.
  ssm_prefix     = "/airunner/${var.environment}"
  container_name = "airunner-server"
  container_port = 8080
  https          = var.domain_name != ""
}
