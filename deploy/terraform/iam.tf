# The task's roles: the task role is what the server calls AWS as; the
# execution role is what ECS uses to pull the image, write logs and read the secrets.

data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "task" {
  name               = "${local.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

# Every AWS call the server makes, and nothing more. The batch calls need no
# actions of their own: ChangeMessageVisibilityBatch is authorized as
# sqs:ChangeMessageVisibility, and a TransactWriteItems Put as dynamodb:PutItem.
# BatchGetItem is the event tail's; DescribeTable, GetQueueAttributes and
# GetQueueUrl (the dead-letter queues, from the redrive policies) the start-up
# check's. The dead-letter queues are read, and their messages sent back or deleted.
resource "aws_iam_role_policy" "task_sqs_dynamodb" {
  name = "${local.name}-sqs-dynamodb"
  role = aws_iam_role.task.name

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "AllowSQSOperations"
        Effect = "Allow"
        Action = [
          "sqs:ReceiveMessage",
          "sqs:SendMessage",
          "sqs:DeleteMessage",
          "sqs:ChangeMessageVisibility",
          "sqs:GetQueueAttributes",
          "sqs:GetQueueUrl"
        ]
        Resource = concat(
          [
            aws_sqs_queue.default.arn,
            aws_sqs_queue.default_dlq.arn,
            aws_sqs_queue.priority.arn,
            aws_sqs_queue.priority_dlq.arn
          ],
          [for queue in aws_sqs_queue.extra : queue.arn],
          [for queue in aws_sqs_queue.extra_dlq : queue.arn]
        )
      },
      {
        Sid    = "AllowDynamoDBOperations"
        Effect = "Allow"
        Action = [
          "dynamodb:PutItem",
          "dynamodb:GetItem",
          "dynamodb:UpdateItem",
          "dynamodb:Query",
          "dynamodb:Scan",
          "dynamodb:BatchWriteItem",
          "dynamodb:BatchGetItem",
          "dynamodb:DescribeTable"
        ]
        Resource = [
          aws_dynamodb_table.jobs.arn,
          "${aws_dynamodb_table.jobs.arn}/index/*",
          aws_dynamodb_table.job_events.arn
        ]
      }
    ]
  })
}

resource "aws_iam_role" "execution" {
  name               = "${local.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# The secrets of the task definition: exactly the parameters that exist.
resource "aws_iam_role_policy" "execution_ssm" {
  name = "${local.name}-read-secrets"
  role = aws_iam_role.execution.name

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "ReadTaskSecrets"
        Effect = "Allow"
        Action = ["ssm:GetParameters"]
        Resource = concat(
          [
            aws_ssm_parameter.jwt_public_key.arn,
            aws_ssm_parameter.token_signing_secret.arn,
          ],
          aws_ssm_parameter.otel_exporter_endpoint[*].arn,
          aws_ssm_parameter.otel_exporter_headers[*].arn,
        )
      }
    ]
  })
}
