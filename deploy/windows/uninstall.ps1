<#
.SYNOPSIS
  Remove the sigstream agent service and its Python environment.

.DESCRIPTION
  Stops the service gracefully (Ctrl+C: the agent stops its ETW session, spools queued events and
  saves bookmarks), removes the service, stops a leftover "sigstream-etw" ETW session if any,
  deletes -InstallDir. -DataDir (config, bookmarks, spool with events not yet delivered, logs) is
  KEPT unless -RemoveData is given. PowerShell logging policy and Sysmon are left as they are
  (other tools may rely on them); -RemovePowerShellLoggingPolicy removes the policy keys.
#>
[CmdletBinding()]
param(
    [string]$InstallDir = "$env:ProgramFiles\sigstream",
    [string]$DataDir = "$env:ProgramData\sigstream",
    [string]$ServiceName = "sigstream",
    [string]$SessionName = "sigstream-etw",
    [switch]$RemoveData,
    [switch]$RemovePowerShellLoggingPolicy
)
$ErrorActionPreference = "Stop"
$p = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) { throw "run elevated (Administrator)" }

$nssm = Join-Path $InstallDir "bin\nssm.exe"
$svc = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($svc) {
    if ($svc.Status -ne "Stopped") {
        Write-Host "Stopping $ServiceName"
        if (Test-Path $nssm) { & $nssm stop $ServiceName | Out-Null } else { Stop-Service $ServiceName }
    }
    if (Test-Path $nssm) { & $nssm remove $ServiceName confirm | Out-Null } else { & sc.exe delete $ServiceName | Out-Null }
    Write-Host "Service $ServiceName removed"
}
# a session left by a crash would otherwise hold one of the 64 system-wide ETW sessions
& logman.exe stop $SessionName -ets 2>$null | Out-Null

$account = "NT SERVICE\$ServiceName"
foreach ($sid in @("S-1-5-32-559", "S-1-5-32-573")) {
    $group = (New-Object Security.Principal.SecurityIdentifier($sid)).Translate([Security.Principal.NTAccount]).Value.Split("\")[-1]
    & net.exe localgroup "$group" "$account" /delete 2>$null | Out-Null
}
if (Test-Path $InstallDir) { Remove-Item -Recurse -Force $InstallDir; Write-Host "Removed $InstallDir" }
if ($RemoveData) {
    $unsent = Get-ChildItem -Recurse -File "$DataDir\spool" -ErrorAction SilentlyContinue | Measure-Object -Property Length -Sum
    if ($unsent.Sum -gt 0) { Write-Warning "the spool holds $($unsent.Sum) bytes of events never delivered to Kafka; they are deleted" }
    Remove-Item -Recurse -Force $DataDir
    Write-Host "Removed $DataDir"
} else {
    Write-Host "Kept $DataDir (config, bookmarks, spool, logs); -RemoveData deletes it"
}
if ($RemovePowerShellLoggingPolicy) {
    foreach ($k in @("HKLM:\SOFTWARE\Policies\Microsoft\Windows\PowerShell\ScriptBlockLogging",
                     "HKLM:\SOFTWARE\Policies\Microsoft\Windows\PowerShell\ModuleLogging",
                     "HKLM:\SOFTWARE\Policies\Microsoft\PowerShellCore\ScriptBlockLogging",
                     "HKLM:\SOFTWARE\Policies\Microsoft\PowerShellCore\ModuleLogging")) {
        Remove-Item -Recurse -Force $k -ErrorAction SilentlyContinue
    }
}
